//! Scenes of the shapes world: objects placed to satisfy a request (exact counts, GenEval's
//! position rule, no overlaps), drawn anti-aliased on a plain background with jittered colours,
//! so no two renders are alike.

use super::World;
use super::judge::relative_position;
use super::prompt::Request;
use crate::noise::Rng;
use crate::{Error, Result};

/// One drawn object, in pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub shape: usize,
    pub color: usize,
    pub size_class: usize,
    /// The drawn colour (the palette's, jittered).
    pub rgb: [u8; 3],
    /// Side of the bounding box (a circle's diameter; a triangle's base and height).
    pub side: f64,
    /// Centre of the bounding box.
    pub cx: f64,
    pub cy: f64,
}

impl Object {
    /// `[x0, y0, x1, y1]`.
    pub fn bbox(&self) -> [f64; 4] {
        let h = self.side / 2.0;
        [self.cx - h, self.cy - h, self.cx + h, self.cy + h]
    }

    /// Whether the point lies inside the shape.
    fn contains(&self, shapes: &[super::ShapeSpec], x: f64, y: f64) -> bool {
        let h = self.side / 2.0;
        let (dx, dy) = (x - self.cx, y - self.cy);
        match shapes[self.shape].name.as_str() {
            "circle" => dx * dx + dy * dy <= h * h,
            // Upright: apex at the top centre, base along the bottom.
            "triangle" => dy.abs() <= h && dx.abs() <= (dy + h) / 2.0,
            _ => dx.abs() <= h && dy.abs() <= h,
        }
    }
}

/// What one picture holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub background: [u8; 3],
    pub objects: Vec<Object>,
}

fn jitter(rgb: [u8; 3], amount: u8, rng: &mut Rng) -> [u8; 3] {
    let a = i32::from(amount);
    rgb.map(|v| (i32::from(v) + rng.below((2 * a + 1) as usize) as i32 - a).clamp(0, 255) as u8)
}

/// A scene that satisfies `request` exactly: every phrase's objects with its shape, colour and
/// size (random where unsaid), the relation by GenEval's rule, and nothing else.
pub fn sample_scene(world: &World, request: &Request, rng: &mut Rng) -> Result<Scene> {
    if request.objects() > world.max_objects || request.objects() == 0 {
        return Err(Error::argument(
            "request",
            format!("{} objects (1 to {})", request.objects(), world.max_objects),
        ));
    }
    let n = world.image_size as f64;
    let gap = world.min_gap * n;
    let apart = |a: &Object, b: &Object| {
        let (p, q) = (a.bbox(), b.bbox());
        p[2] + gap <= q[0] || q[2] + gap <= p[0] || p[3] + gap <= q[1] || q[3] + gap <= p[1]
    };
    // Objects one by one, each at a free spot; start over when one finds none.
    'attempt: for _ in 0..500 {
        let mut objects: Vec<Object> = vec![];
        for p in &request.phrases {
            for _ in 0..p.count {
                let size_class = p.size.unwrap_or_else(|| rng.below(world.sizes.len()));
                let [lo, hi] = world.sizes[size_class].range;
                let side = (lo + (hi - lo) * rng.uniform()) * n;
                let color = p.color.unwrap_or_else(|| rng.below(world.colors.len()));
                let rgb = jitter(world.colors[color].rgb, world.color_jitter, rng);
                let h = side / 2.0;
                // Whole objects on the canvas, a pixel from its edge.
                let span = n - side - 2.0;
                let placed = (0..100).find_map(|_| {
                    let o = Object {
                        shape: p.shape,
                        color,
                        size_class,
                        rgb,
                        side,
                        cx: 1.0 + h + span * rng.uniform(),
                        cy: 1.0 + h + span * rng.uniform(),
                    };
                    objects.iter().all(|q| apart(&o, q)).then_some(o)
                });
                match placed {
                    Some(o) => objects.push(o),
                    None => continue 'attempt,
                }
            }
        }
        let related = match (request.relation, objects.as_slice()) {
            (Some(r), [a, b]) => {
                let name = &world.relations[r].name;
                let rels = relative_position(a.bbox(), b.bbox(), world.position_threshold);
                // Unambiguous: the asked relation and no other.
                rels.len() == 1 && rels.contains(name.as_str())
            }
            _ => true,
        };
        if related {
            return Ok(Scene {
                background: jitter(world.background, world.background_jitter, rng),
                objects,
            });
        }
    }
    Err(Error::argument(
        "request",
        "no placement found for these objects (too many or too large)",
    ))
}

/// Draws a scene: `image_size^2` RGB pixels, row-major, each the mean of `supersample^2`
/// subsamples (anti-aliased edges).
pub fn render(world: &World, scene: &Scene) -> Vec<u8> {
    let n = world.image_size;
    let ss = world.supersample;
    let mut out: Vec<u8> = scene
        .background
        .iter()
        .copied()
        .cycle()
        .take(n * n * 3)
        .collect();
    for o in &scene.objects {
        let [x0, y0, x1, y1] = o.bbox();
        let (px0, py0) = (x0.floor().max(0.0) as usize, y0.floor().max(0.0) as usize);
        let (px1, py1) = (
            (x1.ceil() as usize).min(n - 1),
            (y1.ceil() as usize).min(n - 1),
        );
        for py in py0..=py1 {
            for px in px0..=px1 {
                let mut inside = 0;
                for sy in 0..ss {
                    for sx in 0..ss {
                        let x = px as f64 + (sx as f64 + 0.5) / ss as f64;
                        let y = py as f64 + (sy as f64 + 0.5) / ss as f64;
                        inside += usize::from(o.contains(&world.shapes, x, y));
                    }
                }
                if inside == 0 {
                    continue;
                }
                let cover = inside as f64 / (ss * ss) as f64;
                let at = (py * n + px) * 3;
                for c in 0..3 {
                    let bg = f64::from(out[at + c]);
                    let v = bg + (f64::from(o.rgb[c]) - bg) * cover;
                    out[at + c] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shapes::prompt::{parse, sample_request};
    use crate::shapes::{TASKS, World};

    #[test]
    fn scenes_hold_exactly_what_was_asked() {
        let world = World::builtin().unwrap();
        let mut rng = Rng::new(5);
        for task in TASKS {
            for _ in 0..100 {
                let request = sample_request(&world, task, true, &mut rng).unwrap();
                let scene = sample_scene(&world, &request, &mut rng).unwrap();
                assert_eq!(scene.objects.len(), request.objects());
                let mut i = 0;
                for p in &request.phrases {
                    for o in &scene.objects[i..i + p.count] {
                        assert_eq!(o.shape, p.shape);
                        assert!(p.color.is_none_or(|c| c == o.color));
                        assert!(p.size.is_none_or(|s| s == o.size_class));
                    }
                    i += p.count;
                }
            }
        }
        let four_large = parse(&world, "four big squares").unwrap();
        for _ in 0..200 {
            assert!(sample_scene(&world, &four_large, &mut rng).is_ok());
        }
    }

    #[test]
    fn renders_are_anti_aliased_and_never_alike() {
        let world = World::builtin().unwrap();
        let mut rng = Rng::new(6);
        let request = parse(&world, "a red circle").unwrap();
        let a = render(&world, &sample_scene(&world, &request, &mut rng).unwrap());
        let b = render(&world, &sample_scene(&world, &request, &mut rng).unwrap());
        assert_eq!(a.len(), 64 * 64 * 3);
        assert_ne!(a, b);
        // Edge pixels blend the red into the background.
        let red = world.colors[0].rgb;
        let blends = a
            .chunks(3)
            .filter(|p| p[0] > red[0] + 10 && p[1] > red[1] + 40 && p[1] < 200)
            .count();
        assert!(blends > 5, "{blends}");
    }
}
