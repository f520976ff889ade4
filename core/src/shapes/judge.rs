//! The judge: reads a picture of the shapes world back into objects (palette segmentation,
//! connected components, shape by how much of its box it fills, size by its box, centre) and
//! decides whether a prompt holds by GenEval's rules (`evaluation/evaluate_images.py`): every
//! `include` needs `count` objects of its class, the `count` most confident of them (here: the
//! largest) of its colour (and size), positions by box centres with a 0.1 margin, and counting
//! fails on one object too many. It says why a prompt fails.

use std::collections::BTreeSet;

use serde::Serialize;

use super::World;
use super::prompt::Prompt;
use crate::{Error, Result};

/// One object found in a picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Found {
    pub shape: String,
    pub color: String,
    pub size: String,
    /// Pixels it covers (anti-aliased edges counted by coverage).
    pub area: usize,
    /// `[x0, y0, x1, y1]` in pixels, edges placed by coverage.
    pub bbox: [f64; 4],
    /// Share of the box its pixels fill (square ~1, circle ~0.79, triangle ~0.5).
    pub fill: f64,
}

/// Whether a prompt holds for a picture, and why not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub holds: bool,
    pub reasons: Vec<String>,
    pub found: Vec<Found>,
}

/// GenEval's `relative_position(A, B)`: which of left of / right of / above / below A is of B,
/// from box centres, each offset reduced by `threshold` times the two boxes' extents.
pub fn relative_position(a: [f64; 4], b: [f64; 4], threshold: f64) -> BTreeSet<&'static str> {
    let centre = |r: [f64; 4]| [(r[0] + r[2]) / 2.0, (r[1] + r[3]) / 2.0];
    let dim = |r: [f64; 4]| [(r[2] - r[0]).abs(), (r[3] - r[1]).abs()];
    let (ca, cb, da, db) = (centre(a), centre(b), dim(a), dim(b));
    let offset = [ca[0] - cb[0], ca[1] - cb[1]];
    let revised: Vec<f64> = (0..2)
        .map(|i| (offset[i].abs() - threshold * (da[i] + db[i])).max(0.0) * offset[i].signum())
        .collect();
    let mut out = BTreeSet::new();
    if revised.iter().all(|v| v.abs() < 1e-3) {
        return out;
    }
    let norm = offset[0].hypot(offset[1]);
    let (dx, dy) = (revised[0] / norm, revised[1] / norm);
    if dx < -0.5 {
        out.insert("left of");
    }
    if dx > 0.5 {
        out.insert("right of");
    }
    if dy < -0.5 {
        out.insert("above");
    }
    if dy > 0.5 {
        out.insert("below");
    }
    out
}

/// Every pixel placed on the segment from the background (what most of the border is) to
/// each palette colour: `(coverage t in 0..1, residual distance off the segment)` per colour.
fn placement(world: &World, rgb: &[u8], n: usize) -> Vec<Vec<(f64, f64)>> {
    let background: [f64; 3] = std::array::from_fn(|c| {
        let mut v: Vec<u8> = (0..n)
            .flat_map(|i| [(i, 0), (i, n - 1), (0, i), (n - 1, i)])
            .map(|(x, y)| rgb[(y * n + x) * 3 + c])
            .collect();
        v.sort_unstable();
        f64::from(v[v.len() / 2])
    });
    let place = |p: &[u8], c: [u8; 3]| {
        let d: [f64; 3] = std::array::from_fn(|i| f64::from(c[i]) - background[i]);
        let q: [f64; 3] = std::array::from_fn(|i| f64::from(p[i]) - background[i]);
        let len2 = d.iter().map(|v| v * v).sum::<f64>().max(1.0);
        let t = (q.iter().zip(&d).map(|(a, b)| a * b).sum::<f64>() / len2).clamp(0.0, 1.0);
        let residual = (0..3)
            .map(|i| (q[i] - t * d[i]).powi(2))
            .sum::<f64>()
            .sqrt();
        (t, residual)
    };
    rgb.chunks_exact(3)
        .map(|p| world.colors.iter().map(|c| place(p, c.rgb)).collect())
        .collect()
}

/// How far a picture has left the world: the share of its pixels that no mix of the background
/// and one palette colour explains (off every segment by `color_distance` or more). A world
/// render scores ~0; reward hacking (colour gradients, melted shapes, texture) raises it while a
/// reward may still rise.
pub fn off_world_share(
    world: &World,
    name: &str,
    rgb: &[u8],
    width: usize,
    height: usize,
) -> Result<f64> {
    let n = world.image_size;
    check_size(world, name, rgb, width, height)?;
    let near = world.judge.color_distance;
    let off = placement(world, rgb, n)
        .iter()
        .filter(|per| per.iter().all(|&(_, r)| r >= near))
        .count();
    Ok(off as f64 / (n * n) as f64)
}

fn check_size(world: &World, name: &str, rgb: &[u8], width: usize, height: usize) -> Result<()> {
    let n = world.image_size;
    if width != n || height != n || rgb.len() != n * n * 3 {
        return Err(Error::BadImage {
            name: name.to_string(),
            reason: format!("{width}x{height}: the shapes judge reads {n}x{n} pictures"),
        });
    }
    Ok(())
}

/// Reads the objects of an RGB picture (`image_size^2` pixels, row-major), largest first.
///
/// Each pixel is placed on the segment from the background to each palette colour: its
/// coverage `t` (how far along) and residual (how far off). A pixel belongs to the colour it
/// lies nearest to, when covered more than half and off by less than `color_distance`; objects
/// are 4-connected runs of one colour. Their extents and areas are measured with coverage, so
/// anti-aliased edges count by how much they are covered: a box fill of ~1 is a square, ~0.79 a
/// circle, ~0.5 (with its area low in the box) a triangle, at any size. A run that fits no
/// shape, or whose box is elongated or of no size the world draws, is found as `unknown`.
pub fn find_objects(
    world: &World,
    name: &str,
    rgb: &[u8],
    width: usize,
    height: usize,
) -> Result<Vec<Found>> {
    let n = world.image_size;
    check_size(world, name, rgb, width, height)?;
    let placed = placement(world, rgb, n);
    let colors = world.colors.len();
    let near = world.judge.color_distance;
    let coverage = |i: usize, c: usize| {
        let (t, r) = placed[i][c];
        if r < near { t } else { 0.0 }
    };
    // The colour whose segment the pixel lies nearest, if it is near and covers over half.
    let label: Vec<Option<usize>> = placed
        .iter()
        .map(|per| {
            let best = (0..colors).min_by(|&a, &b| per[a].1.total_cmp(&per[b].1))?;
            (per[best].0 > 0.5 && per[best].1 < near).then_some(best)
        })
        .collect();
    let mut seen = vec![false; n * n];
    let mut found = vec![];
    for start in 0..n * n {
        let Some(color) = label[start] else { continue };
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut members = vec![];
        while let Some(i) = stack.pop() {
            members.push(i);
            let (x, y) = (i % n, i / n);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < n).then(|| i + 1),
                (y > 0).then(|| i - n),
                (y + 1 < n).then(|| i + n),
            ];
            for j in neighbours.into_iter().flatten() {
                if !seen[j] && label[j] == Some(color) {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        if members.len() < world.judge.min_area {
            continue;
        }
        // The run and the unlabelled pixels around it (its anti-aliased rim), by coverage.
        let (x0, x1) = members
            .iter()
            .fold((n, 0), |(a, b), i| (a.min(i % n), b.max(i % n)));
        let (y0, y1) = members
            .iter()
            .fold((n, 0), |(a, b), i| (a.min(i / n), b.max(i / n)));
        let (rx0, ry0, rx1, ry1) = (
            x0.saturating_sub(1),
            y0.saturating_sub(1),
            (x1 + 1).min(n - 1),
            (y1 + 1).min(n - 1),
        );
        let mut cols = vec![0.0f64; rx1 + 1 - rx0];
        let mut rows = vec![0.0f64; ry1 + 1 - ry0];
        let mut area = 0.0;
        for y in ry0..=ry1 {
            for x in rx0..=rx1 {
                let i = y * n + x;
                let t = match label[i] {
                    Some(c) if c == color => coverage(i, color),
                    None => coverage(i, color),
                    Some(_) => 0.0,
                };
                area += t;
                cols[x - rx0] = cols[x - rx0].max(t);
                rows[y - ry0] = rows[y - ry0].max(t);
            }
        }
        let (w, h) = (cols.iter().sum::<f64>(), rows.iter().sum::<f64>());
        let fill = area / (w * h).max(1.0);
        // A shape only when it looks like one: its fill, a squarish box, a world-sized side,
        // and (a triangle) its area low in its box. Anything else is an unknown blob.
        let j = &world.judge;
        let side = w.max(h) / n as f64;
        let plausible = w.max(h) <= j.max_aspect * w.min(h)
            && (j.side_range[0]..=j.side_range[1]).contains(&side);
        let low = centroid_y(&members, n) - (y0 + y1 + 1) as f64 / 2.0;
        let shape = j
            .fills
            .iter()
            .filter(|(_, f)| (fill - **f).abs() <= j.fill_tolerance)
            .map(|(name, _)| name.as_str())
            .find(|name| *name != "triangle" || low > 0.08 * h)
            .filter(|_| plausible)
            .unwrap_or("unknown");
        // Box edges: the first and last covered columns and rows, by how much they are covered.
        let edge = |profile: &[f64], origin: usize| {
            let first = profile.iter().position(|&t| t > 0.0).unwrap_or(0);
            let last = profile.iter().rposition(|&t| t > 0.0).unwrap_or(0);
            (
                (origin + first) as f64 + 1.0 - profile[first],
                (origin + last) as f64 + profile[last],
            )
        };
        let ((bx0, bx1), (by0, by1)) = (edge(&cols, rx0), edge(&rows, ry0));
        let large = w.max(h) >= world.judge.large_side * n as f64;
        let size = &world.sizes[usize::from(large).min(world.sizes.len() - 1)].name;
        found.push(Found {
            shape: shape.to_string(),
            color: world.colors[color].name.clone(),
            size: size.clone(),
            area: area.round() as usize,
            bbox: [bx0, by0, bx1, by1],
            fill,
        });
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.area));
    Ok(found)
}

/// Mean row of a run's pixels (+0.5: pixel centres).
fn centroid_y(members: &[usize], n: usize) -> f64 {
    members.iter().map(|i| (i / n) as f64 + 0.5).sum::<f64>() / members.len().max(1) as f64
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// GenEval's `evaluate` on the objects found.
pub fn judge(world: &World, prompt: &Prompt, found: Vec<Found>) -> Verdict {
    let mut reasons = vec![];
    let mut groups: Vec<Option<Vec<&Found>>> = vec![];
    for req in &prompt.include {
        let of_class: Vec<&Found> = found.iter().filter(|f| f.shape == req.class).collect();
        let top: Vec<&Found> = of_class.iter().take(req.count).copied().collect();
        let mut matched = true;
        if top.len() < req.count {
            matched = false;
            reasons.push(format!(
                "found {}, wanted {}",
                plural(of_class.len(), &req.class),
                req.count
            ));
        } else {
            for (wanted, got) in [
                (&req.color, top.iter().map(|f| &f.color).collect::<Vec<_>>()),
                (&req.size, top.iter().map(|f| &f.size).collect()),
            ] {
                let Some(wanted) = wanted else { continue };
                let hits = got.iter().filter(|g| **g == wanted).count();
                if hits < req.count {
                    matched = false;
                    let got: Vec<&str> = got.iter().map(|g| g.as_str()).collect();
                    reasons.push(if req.count == 1 {
                        format!("wanted a {wanted} {}, found a {} one", req.class, got[0])
                    } else {
                        format!(
                            "wanted {} {wanted} {}s, found {}",
                            req.count,
                            req.class,
                            got.join(", ")
                        )
                    });
                }
            }
            if let (Some((rel, target)), true) = (&req.position, matched) {
                match groups.get(*target).cloned().flatten() {
                    None => {
                        matched = false;
                        reasons.push(format!("no target for the {} to be {rel}", req.class));
                    }
                    Some(targets) => {
                        'pairs: for a in &top {
                            for b in &targets {
                                let rels =
                                    relative_position(a.bbox, b.bbox, world.position_threshold);
                                if !rels.contains(rel.as_str()) {
                                    matched = false;
                                    let actual = if rels.is_empty() {
                                        "level with".to_string()
                                    } else {
                                        rels.into_iter().collect::<Vec<_>>().join(" and ")
                                    };
                                    reasons.push(format!(
                                        "wanted the {} {rel} the {}, it is {actual} it",
                                        req.class, b.shape
                                    ));
                                    break 'pairs;
                                }
                            }
                        }
                    }
                }
            }
        }
        groups.push(matched.then_some(top));
    }
    for ex in &prompt.exclude {
        let n = found.iter().filter(|f| f.shape == ex.class).count();
        if n >= ex.count {
            reasons.push(format!(
                "found {}, wanted fewer than {}",
                plural(n, &ex.class),
                ex.count
            ));
        }
    }
    Verdict {
        holds: reasons.is_empty(),
        reasons,
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::Rng;
    use crate::shapes::TASKS;
    use crate::shapes::prompt::{Wording, parse, sample_request};
    use crate::shapes::render::{render, sample_scene};

    #[test]
    fn geneval_position_rule() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [30.0, 2.0, 40.0, 12.0];
        assert_eq!(relative_position(a, b, 0.1), BTreeSet::from(["left of"]));
        assert_eq!(relative_position(b, a, 0.1), BTreeSet::from(["right of"]));
        // Centres closer than the margin: no relation.
        assert!(relative_position(a, [1.0, 1.0, 11.0, 11.0], 0.1).is_empty());
        let diag = relative_position(a, [30.0, 30.0, 40.0, 40.0], 0.1);
        assert_eq!(diag, BTreeSet::from(["above", "left of"]));
    }

    /// The judge is exact on the world's own renders, and says what a wrong one lacks.
    #[test]
    fn the_judge_holds_on_renders_and_refuses_their_negatives() {
        let world = World::builtin().unwrap();
        let mut rng = Rng::new(9);
        for task in TASKS {
            let mut wrong = vec![];
            for _ in 0..300 {
                let request = sample_request(&world, task, true, &mut rng).unwrap();
                let text = request.text(&world, &Wording::random(&world, &mut rng));
                let scene = sample_scene(&world, &request, &mut rng).unwrap();
                let pixels = render(&world, &scene);
                let found = find_objects(&world, "render", &pixels, 64, 64).unwrap();
                let verdict = judge(&world, &request.metadata(&world, text.clone()), found);
                if !verdict.holds {
                    wrong.push((text, verdict.reasons, verdict.found));
                }
            }
            assert!(wrong.is_empty(), "{task}: {wrong:?}");
        }
    }

    /// Renders are (almost) all background and palette colour; noise is mostly neither.
    #[test]
    fn renders_stay_in_the_world_and_noise_does_not() {
        let world = World::builtin().unwrap();
        let mut rng = Rng::new(12);
        let mut worst: f64 = 0.0;
        for task in TASKS {
            for _ in 0..20 {
                let request = sample_request(&world, task, true, &mut rng).unwrap();
                let scene = sample_scene(&world, &request, &mut rng).unwrap();
                let pixels = render(&world, &scene);
                worst = worst.max(off_world_share(&world, "render", &pixels, 64, 64).unwrap());
            }
        }
        // Anti-aliased rims between two objects are the only pixels no single colour explains.
        assert!(worst < 0.01, "a render is {worst} off the world");
        let noise: Vec<u8> = (0..64 * 64 * 3).map(|_| rng.below(256) as u8).collect();
        let off = off_world_share(&world, "noise", &noise, 64, 64).unwrap();
        assert!(off > 0.5, "noise is only {off} off the world");
        assert!(off_world_share(&world, "small", &noise[..48], 4, 4).is_err());
    }

    /// Noise is not a picture of anything: whatever runs of palette colour it has fit no shape.
    #[test]
    fn noise_holds_no_shapes() {
        let world = World::builtin().unwrap();
        let mut rng = Rng::new(4);
        for _ in 0..20 {
            let pixels: Vec<u8> = (0..64 * 64 * 3).map(|_| rng.below(256) as u8).collect();
            let found = find_objects(&world, "noise", &pixels, 64, 64).unwrap();
            assert!(found.iter().all(|f| f.shape == "unknown"), "{found:?}");
        }
    }

    #[test]
    fn reasons_name_what_is_wrong() {
        let world = World::builtin().unwrap();
        let mut rng = Rng::new(2);
        let three = parse(&world, "three circles").unwrap();
        let pixels = render(&world, &sample_scene(&world, &three, &mut rng).unwrap());
        let found = || find_objects(&world, "x", &pixels, 64, 64).unwrap();
        let two = parse(&world, "two circles")
            .unwrap()
            .metadata(&world, "two circles".into());
        let v = judge(&world, &two, found());
        assert!(!v.holds);
        assert_eq!(v.reasons, vec!["found 3 circles, wanted fewer than 3"]);
        let sq = parse(&world, "a square")
            .unwrap()
            .metadata(&world, "a square".into());
        assert_eq!(
            judge(&world, &sq, found()).reasons,
            vec!["found 0 squares, wanted 1"]
        );
        let err = find_objects(&world, "big.png", &pixels, 32, 32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("big.png") && err.contains("64x64"), "{err}");
    }
}
