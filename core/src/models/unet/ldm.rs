//! The original (LDM / CompVis) key names of the SD UNet, which stable-diffusion.cpp's and
//! ComfyUI-GGUF's files (and single-file checkpoints) use, renamed to diffusers'. This is the
//! inverse of diffusers' `convert_ldm_unet_checkpoint`; block indices depend on the config
//! (layers per block, which blocks have attention), so the table is built from it.
//!
//! LDM's layout: `input_blocks.0.0` is `conv_in`; then per level, `layers` blocks of
//! `[ResBlock, SpatialTransformer?]` and, below the last level, one `[Downsample]` (`.0.op`);
//! `middle_block` is `[ResBlock, SpatialTransformer, ResBlock]`; `output_blocks` per level
//! (deepest first) `layers + 1` blocks of `[ResBlock, SpatialTransformer?, Upsample?]`;
//! ResBlocks name their parts by `nn.Sequential` index (`in_layers.0` = `norm1`, ...). The
//! transformers inside keep diffusers' names.

use super::config::UNetConfig;

/// The prefix single-file checkpoints and stable-diffusion.cpp put before the UNet's keys.
pub const PREFIX: &str = "model.diffusion_model.";

/// Keys of the other models a whole-checkpoint file carries (VAE, text encoders): not the
/// UNet's, left unused.
pub const OTHER_MODELS: &[&str] = &["first_stage_model.", "cond_stage_model.", "conditioner."];

/// Whether a UNet weight file names its tensors the LDM way.
pub fn is_ldm<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| n.starts_with("input_blocks.") || n.starts_with(PREFIX))
}

/// `(regex, replacement)` pairs, applied in order to every key, that turn LDM names into
/// diffusers' (what [`crate::weights::load_remapped`] takes).
pub fn renames(config: &UNetConfig) -> Vec<(String, String)> {
    let mut rules: Vec<(String, String)> = Vec::new();
    let mut rule = |from: String, to: String| rules.push((from, to));
    rule(format!("^{}", regex_escape(PREFIX)), String::new());
    rule(r"^input_blocks\.0\.0\.".into(), "conv_in.".into());
    let mut i = 1;
    for (b, block) in config.down.iter().enumerate() {
        for l in 0..block.layers {
            rule(
                format!(r"^input_blocks\.{i}\.0\."),
                format!("down_blocks.{b}.resnets.{l}."),
            );
            if block.transformer_layers > 0 {
                rule(
                    format!(r"^input_blocks\.{i}\.1\."),
                    format!("down_blocks.{b}.attentions.{l}."),
                );
            }
            i += 1;
        }
        if b + 1 < config.down.len() {
            rule(
                format!(r"^input_blocks\.{i}\.0\.op\."),
                format!("down_blocks.{b}.downsamplers.0.conv."),
            );
            i += 1;
        }
    }
    rule(r"^middle_block\.0\.".into(), "mid_block.resnets.0.".into());
    rule(
        r"^middle_block\.1\.".into(),
        "mid_block.attentions.0.".into(),
    );
    rule(r"^middle_block\.2\.".into(), "mid_block.resnets.1.".into());
    let mut j = 0;
    for (b, block) in config.up.iter().enumerate() {
        let attention = block.transformer_layers > 0;
        for l in 0..block.layers {
            rule(
                format!(r"^output_blocks\.{j}\.0\."),
                format!("up_blocks.{b}.resnets.{l}."),
            );
            if attention {
                rule(
                    format!(r"^output_blocks\.{j}\.1\."),
                    format!("up_blocks.{b}.attentions.{l}."),
                );
            }
            if l + 1 == block.layers && b + 1 < config.up.len() {
                let k = if attention { 2 } else { 1 };
                rule(
                    format!(r"^output_blocks\.{j}\.{k}\.conv\."),
                    format!("up_blocks.{b}.upsamplers.0.conv."),
                );
            }
            j += 1;
        }
    }
    for (from, to) in [
        (r"^time_embed\.0\.", "time_embedding.linear_1."),
        (r"^time_embed\.2\.", "time_embedding.linear_2."),
        (r"^label_emb\.0\.0\.", "add_embedding.linear_1."),
        (r"^label_emb\.0\.2\.", "add_embedding.linear_2."),
        (r"^out\.0\.", "conv_norm_out."),
        (r"^out\.2\.", "conv_out."),
        // Inside the ResBlocks, now named as diffusers' resnets.
        (r"(resnets\.\d+)\.in_layers\.0\.", "${1}.norm1."),
        (r"(resnets\.\d+)\.in_layers\.2\.", "${1}.conv1."),
        (r"(resnets\.\d+)\.emb_layers\.1\.", "${1}.time_emb_proj."),
        (r"(resnets\.\d+)\.out_layers\.0\.", "${1}.norm2."),
        (r"(resnets\.\d+)\.out_layers\.3\.", "${1}.conv2."),
        (r"(resnets\.\d+)\.skip_connection\.", "${1}.conv_shortcut."),
    ] {
        rule(from.into(), to.into());
    }
    rules
}

fn regex_escape(text: &str) -> String {
    text.replace('.', r"\.")
}
