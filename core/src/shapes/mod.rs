//! The shapes world: a procedural text-to-image world in which Tastebud's own models are trained
//! and in which a judge is exact. One spec (`models/shapes/world.json`) defines the canvas, the
//! palette, the shapes, sizes, numbers, relations and wordings; the renderer ([`render`]), the
//! captions and their parser ([`prompt`]), the judge ([`judge`]) and the training scripts all
//! read it.
//!
//! Prompts are GenEval's (REFERENCE.md, "GenEval"): six tasks whose metadata lists the objects a
//! picture must include (a shape, a count, optionally a colour, a size and a position relative
//! to an earlier object) and, for counting, the count it must stay under.

pub mod judge;
pub mod prompt;
pub mod render;

use serde::Deserialize;

use crate::{Error, Result};

/// The spec the project ships, built in (the renderer, judge and parser need no files).
pub const WORLD_JSON: &str = include_str!("../../../models/shapes/world.json");

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct NamedColor {
    pub name: String,
    pub rgb: [u8; 3],
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ShapeSpec {
    pub name: String,
    /// Words that name it, the first canonical.
    pub words: Vec<String>,
    pub plurals: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SizeSpec {
    pub name: String,
    pub words: Vec<String>,
    /// Side (circle: diameter) as a fraction of the image side, `[min, max)`.
    pub range: [f64; 2],
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RelationSpec {
    /// GenEval's name: `left of`, `right of`, `above`, `below`.
    pub name: String,
    pub words: Vec<String>,
}

/// How the judge reads pixels.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct JudgeSpec {
    /// A pixel belongs to a palette colour closer than this (RGB distance).
    pub color_distance: f64,
    /// Components smaller than this many pixels are noise.
    pub min_area: usize,
    /// How much of its bounding box each shape fills, as the judge measures it on renders
    /// (square ~1, circle ~pi/4, triangle ~1/2; thin apexes and rims bias the measure up).
    pub fills: std::collections::BTreeMap<String, f64>,
    /// A run is a shape when its fill is this close to the shape's.
    pub fill_tolerance: f64,
    /// ... its box no more elongated than this ...
    pub max_aspect: f64,
    /// ... and its longer side within this range (fractions of the image side).
    pub side_range: [f64; 2],
    /// Bounding-box side (fraction of the image) from which an object is large.
    pub large_side: f64,
}

/// The world spec (`models/shapes/world.json`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct World {
    pub name: String,
    pub version: u32,
    pub image_size: usize,
    /// Subsamples per pixel side for anti-aliasing.
    pub supersample: usize,
    pub background: [u8; 3],
    pub background_jitter: u8,
    pub colors: Vec<NamedColor>,
    pub color_jitter: u8,
    pub shapes: Vec<ShapeSpec>,
    pub sizes: Vec<SizeSpec>,
    /// Least gap between objects' boxes, as a fraction of the image side.
    pub min_gap: f64,
    pub max_objects: usize,
    /// Number words by value (`numbers[2] == "two"`).
    pub numbers: Vec<String>,
    pub relations: Vec<RelationSpec>,
    /// What captions may start with ("a photo of"); "" for none.
    pub prefixes: Vec<String>,
    /// GenEval's `POSITION_THRESHOLD`.
    pub position_threshold: f64,
    pub judge: JudgeSpec,
}

impl World {
    /// The spec the project ships.
    pub fn builtin() -> Result<Self> {
        Self::from_json("models/shapes/world.json", WORLD_JSON.as_bytes())
    }

    /// Parses and checks a spec.
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::BadJson {
            file: file.to_string(),
            reason,
        };
        let world: World = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if !(16..=1024).contains(&world.image_size) || !(1..=16).contains(&world.supersample) {
            return Err(bad(
                "image_size must be 16..=1024, supersample 1..=16".into()
            ));
        }
        if world.colors.is_empty() || world.shapes.is_empty() || world.sizes.is_empty() {
            return Err(bad("colors, shapes and sizes must not be empty".into()));
        }
        if world
            .shapes
            .iter()
            .any(|s| s.words.is_empty() || s.plurals.is_empty())
        {
            return Err(bad("every shape needs words and plurals".into()));
        }
        if world.max_objects < 1 || world.numbers.len() <= world.max_objects {
            return Err(bad("numbers must name every count up to max_objects".into()));
        }
        if world
            .sizes
            .iter()
            .any(|s| !(0.0 < s.range[0] && s.range[0] < s.range[1] && s.range[1] < 0.5))
        {
            return Err(bad("size ranges must lie in (0, 0.5)".into()));
        }
        let names = ["left of", "right of", "above", "below"];
        if world.relations.len() != 4
            || !world
                .relations
                .iter()
                .all(|r| names.contains(&r.name.as_str()))
        {
            return Err(bad(format!("relations must be {}", names.join(", "))));
        }
        Ok(world)
    }

    pub fn color_index(&self, name: &str) -> Option<usize> {
        self.colors.iter().position(|c| c.name == name)
    }

    pub fn shape_index(&self, name: &str) -> Option<usize> {
        self.shapes.iter().position(|s| s.name == name)
    }

    pub fn size_index(&self, name: &str) -> Option<usize> {
        self.sizes.iter().position(|s| s.name == name)
    }
}

/// GenEval's six tasks.
pub const TASKS: [&str; 6] = [
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_spec_parses() {
        let world = World::builtin().unwrap();
        assert_eq!(world.image_size, 64);
        assert!(world.colors.len() >= 6 && world.shapes.len() >= 3);
        assert_eq!(world.numbers[4], "four");
        let err = World::from_json("w.json", b"{}").unwrap_err().to_string();
        assert!(err.contains("w.json"), "{err}");
    }
}
