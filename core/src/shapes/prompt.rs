//! Prompts of the shapes world: GenEval's metadata (what a picture must include and exclude),
//! the English captions that say it, a parser from captions back to metadata, the hard
//! negatives a contrastive reward must tell apart, and the seeded evaluation suite.
//!
//! Grammar (words from the spec): `[prefix] clause`, where a clause is one noun phrase, two
//! joined by `and`, or two joined by a relation (`A left of B`); a noun phrase is
//! `(a|an|NUMBER) [SIZE] [COLOR] SHAPE`, the shape plural after a number above one.

use serde::{Deserialize, Serialize};

use super::{TASKS, World};
use crate::noise::Rng;
use crate::{Error, Result};

/// One object group a picture must include (GenEval's `include` entry; `size` is Tastebud's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Include {
    /// The shape's name (GenEval's class).
    pub class: String,
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// `(relation, index of an earlier include)`: these objects are `relation` that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<(String, usize)>,
}

/// How many objects of a class are too many (counting's `exclude`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exclude {
    pub class: String,
    pub count: usize,
}

/// A prompt with what it asks for, in GenEval's `evaluation_metadata.jsonl` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    pub tag: String,
    pub include: Vec<Include>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<Exclude>,
    pub prompt: String,
}

/// One noun phrase's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phrase {
    pub shape: usize,
    pub count: usize,
    pub color: Option<usize>,
    pub size: Option<usize>,
}

/// What a caption says, before wording: one phrase, two joined by `and`, or `A relation B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub phrases: Vec<Phrase>,
    /// Index into the spec's relations: `phrases[0]` is that to `phrases[1]`.
    pub relation: Option<usize>,
}

/// Word choices, reused so that a caption and its hard negatives read alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wording {
    pub prefix: usize,
    /// Picks for each synonym slot in order (taken modulo the number of synonyms).
    pub picks: Vec<usize>,
}

impl Wording {
    pub fn random(world: &World, rng: &mut Rng) -> Self {
        Self {
            prefix: rng.below(world.prefixes.len().max(1)),
            picks: (0..8).map(|_| rng.below(4)).collect(),
        }
    }

    /// The first of every word, GenEval's "a photo of".
    pub fn canonical() -> Self {
        Self {
            prefix: 0,
            picks: vec![0; 8],
        }
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

impl Request {
    /// GenEval's task for this request.
    pub fn tag(&self) -> &'static str {
        match (self.phrases.as_slice(), self.relation) {
            (_, Some(_)) => "position",
            ([a, b], None) if a.color.is_some() && b.color.is_some() => "color_attr",
            ([_, _], None) => "two_object",
            ([p], None) if p.count > 1 => "counting",
            ([p], None) if p.color.is_some() => "colors",
            _ => "single_object",
        }
    }

    /// The caption in `wording`.
    pub fn text(&self, world: &World, wording: &Wording) -> String {
        let mut picks = wording.picks.iter().copied().cycle();
        let mut pick = |words: &[String]| -> String {
            let i = picks.next().unwrap_or(0);
            words
                .get(i % words.len().max(1))
                .cloned()
                .unwrap_or_default()
        };
        let mut phrases = vec![];
        for p in &self.phrases {
            let mut words = vec![];
            if let Some(s) = p.size {
                words.push(pick(&world.sizes[s].words));
            }
            if let Some(c) = p.color {
                words.push(world.colors[c].name.clone());
            }
            let shape = &world.shapes[p.shape];
            if p.count == 1 {
                words.push(pick(&shape.words));
                let first = words[0].clone();
                words.insert(0, article(&first).to_string());
            } else {
                words.push(pick(&shape.plurals));
                words.insert(0, world.numbers[p.count].clone());
            }
            phrases.push(words.join(" "));
        }
        let body = match self.relation {
            Some(r) => format!(
                "{} {} {}",
                phrases[0],
                pick(&world.relations[r].words),
                phrases.get(1).cloned().unwrap_or_default()
            ),
            None => phrases.join(" and "),
        };
        let prefix = world
            .prefixes
            .get(wording.prefix)
            .map_or("", String::as_str);
        if prefix.is_empty() {
            body
        } else {
            format!("{prefix} {body}")
        }
    }

    /// GenEval's metadata for this request, with `text` as its prompt.
    pub fn metadata(&self, world: &World, text: String) -> Prompt {
        let include_of = |p: &Phrase| Include {
            class: world.shapes[p.shape].name.clone(),
            count: p.count,
            color: p.color.map(|c| world.colors[c].name.clone()),
            size: p.size.map(|s| world.sizes[s].name.clone()),
            position: None,
        };
        let mut include: Vec<Include> = self.phrases.iter().map(include_of).collect();
        if let (Some(r), [a, b]) = (self.relation, include.as_slice()) {
            // GenEval lists the reference object first: "A left of B" -> [B, A (left of, 0)].
            let mut a = a.clone();
            a.position = Some((world.relations[r].name.clone(), 0));
            include = vec![b.clone(), a];
        }
        let exclude = match self.phrases.as_slice() {
            [p] if p.count > 1 => vec![Exclude {
                class: world.shapes[p.shape].name.clone(),
                count: p.count + 1,
            }],
            _ => vec![],
        };
        Prompt {
            tag: self.tag().to_string(),
            include,
            exclude,
            prompt: text,
        }
    }

    /// Total objects a picture of this request holds.
    pub fn objects(&self) -> usize {
        self.phrases.iter().map(|p| p.count).sum()
    }
}

/// Parses a caption of the world's grammar; a word outside it is an error that names it.
pub fn parse(world: &World, text: &str) -> Result<Request> {
    let bad = |reason: String| Error::BadPrompt(format!("{text:?}: {reason}"));
    let lower = text.trim().trim_end_matches('.').to_lowercase();
    let mut body: &str = lower.as_str();
    // Longest prefix first ("a photo of" must not be read as the article "a").
    let mut prefixes: Vec<&String> = world.prefixes.iter().filter(|p| !p.is_empty()).collect();
    prefixes.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in prefixes {
        if let Some(rest) = body
            .strip_prefix(p.as_str())
            .and_then(|r| r.strip_prefix(' '))
        {
            body = rest;
            break;
        }
    }
    let words: Vec<&str> = body.split_whitespace().collect();
    if words.is_empty() {
        return Err(bad("says nothing to draw".into()));
    }
    // A relation splits the caption in two; longest wording first.
    let mut relations: Vec<(usize, Vec<&str>)> = world
        .relations
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.words.iter().map(move |w| (i, w.split(' ').collect())))
        .collect();
    relations.sort_by_key(|(_, w)| std::cmp::Reverse(w.len()));
    for (r, rel) in &relations {
        if let Some(at) = (1..words.len()).find(|&i| words[i..].starts_with(rel)) {
            let a = phrase(world, &words[..at]).map_err(&bad)?;
            let b = phrase(world, &words[at + rel.len()..]).map_err(&bad)?;
            return check(
                world,
                text,
                Request {
                    phrases: vec![a, b],
                    relation: Some(*r),
                },
            );
        }
    }
    let parts: Vec<&[&str]> = words.split(|w| *w == "and").collect();
    if parts.len() > 2 {
        return Err(bad("joins more than two objects".into()));
    }
    let phrases = parts
        .iter()
        .map(|p| phrase(world, p))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(bad)?;
    check(
        world,
        text,
        Request {
            phrases,
            relation: None,
        },
    )
}

fn check(world: &World, text: &str, request: Request) -> Result<Request> {
    if request.objects() > world.max_objects {
        return Err(Error::BadPrompt(format!(
            "{text:?}: {} objects; the world holds at most {}",
            request.objects(),
            world.max_objects
        )));
    }
    if request.relation.is_some() && request.phrases.iter().any(|p| p.count != 1) {
        return Err(Error::BadPrompt(format!(
            "{text:?}: a position relates one object to one other"
        )));
    }
    Ok(request)
}

/// `(a|an|NUMBER) [SIZE] [COLOR] SHAPE`.
fn phrase(world: &World, words: &[&str]) -> std::result::Result<Phrase, String> {
    let known = |what: &str| {
        format!(
            "the shapes world knows shapes {}, colours {}, sizes {}, numbers up to {}",
            world
                .shapes
                .iter()
                .map(|s| s.words.join("/"))
                .collect::<Vec<_>>()
                .join(", "),
            world
                .colors
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            world
                .sizes
                .iter()
                .map(|s| s.words.join("/"))
                .collect::<Vec<_>>()
                .join(", "),
            world.numbers[world.max_objects]
        ) + what
    };
    let Some((first, rest)) = words.split_first() else {
        return Err("an object is missing".into());
    };
    let count = match *first {
        "a" | "an" | "one" => 1,
        w => world
            .numbers
            .iter()
            .position(|n| n == w)
            .or_else(|| w.parse().ok())
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("`{w}` is not an article or a number"))?,
    };
    let Some((last, attributes)) = rest.split_last() else {
        return Err(format!("`{first}` names no shape"));
    };
    let mut phrase = Phrase {
        shape: 0,
        count,
        color: None,
        size: None,
    };
    for w in attributes {
        if let Some(c) = world.colors.iter().position(|c| c.name == *w) {
            phrase.color = Some(c);
        } else if let Some(s) = world
            .sizes
            .iter()
            .position(|s| s.words.iter().any(|x| x == w))
        {
            phrase.size = Some(s);
        } else {
            return Err(format!("unknown word `{w}`: {}", known("")));
        }
    }
    let plural = world
        .shapes
        .iter()
        .position(|s| s.plurals.iter().any(|x| x == last));
    let singular = world
        .shapes
        .iter()
        .position(|s| s.words.iter().any(|x| x == last));
    phrase.shape = match (count, singular, plural) {
        (1, Some(s), _) | (2.., _, Some(s)) => s,
        (1, None, Some(_)) => return Err(format!("`{first} {last}`: one object, plural noun")),
        (2.., Some(_), None) => return Err(format!("`{first} {last}`: a number, singular noun")),
        _ => return Err(format!("unknown shape `{last}`: {}", known(""))),
    };
    Ok(phrase)
}

/// The same caption with one thing changed: a colour, a shape, a count, the relation, the two
/// objects' roles, or their colours swapped. What a reward must tell apart.
pub fn hard_negatives(world: &World, request: &Request, rng: &mut Rng) -> Vec<Request> {
    let mut out = vec![];
    let other = |n: usize, not: usize, rng: &mut Rng| (not + 1 + rng.below(n - 1)) % n;
    for (i, p) in request.phrases.iter().enumerate() {
        let mut r = request.clone();
        r.phrases[i].shape = other(world.shapes.len(), p.shape, rng);
        out.push(r);
        if let Some(c) = p.color {
            let mut r = request.clone();
            r.phrases[i].color = Some(other(world.colors.len(), c, rng));
            out.push(r);
        }
        if let Some(s) = p.size {
            let mut r = request.clone();
            r.phrases[i].size = Some(other(world.sizes.len(), s, rng));
            out.push(r);
        }
    }
    if let [p] = request.phrases.as_slice() {
        for count in [p.count.saturating_sub(1), p.count + 1] {
            if (1..=world.max_objects).contains(&count) && count != p.count {
                let mut r = request.clone();
                r.phrases[0].count = count;
                out.push(r);
            }
        }
    }
    if let Some(rel) = request.relation {
        // left <-> right, above <-> below.
        let opposite = |name: &str| match name {
            "left of" => "right of",
            "right of" => "left of",
            "above" => "below",
            _ => "above",
        };
        let flipped = world
            .relations
            .iter()
            .position(|x| x.name == opposite(&world.relations[rel].name));
        let mut r = request.clone();
        r.relation = flipped;
        out.push(r);
        let mut r = request.clone();
        r.phrases.swap(0, 1);
        if r != *request {
            out.push(r);
        }
    }
    if let [a, b] = request.phrases.as_slice()
        && a.color.is_some()
        && b.color.is_some()
        && a.color != b.color
    {
        let mut r = request.clone();
        r.phrases[0].color = b.color;
        r.phrases[1].color = a.color;
        out.push(r);
    }
    out.retain(|r| r != request);
    out
}

/// A request of GenEval's `task` over the world, as GenEval's `create_prompts.py` draws them;
/// `extras` adds what training captions also say (sizes; colours on counts and positions).
pub fn sample_request(world: &World, task: &str, extras: bool, rng: &mut Rng) -> Result<Request> {
    let shapes = world.shapes.len();
    let colors = world.colors.len();
    let plain = |shape| Phrase {
        shape,
        count: 1,
        color: None,
        size: None,
    };
    let two_shapes = |rng: &mut Rng| {
        let a = rng.below(shapes);
        (a, (a + 1 + rng.below(shapes - 1)) % shapes)
    };
    let mut request = match task {
        "single_object" => Request {
            phrases: vec![plain(rng.below(shapes))],
            relation: None,
        },
        "two_object" => {
            let (a, b) = two_shapes(rng);
            Request {
                phrases: vec![plain(a), plain(b)],
                relation: None,
            }
        }
        "counting" => Request {
            phrases: vec![Phrase {
                count: 2 + rng.below(world.max_objects - 1),
                ..plain(rng.below(shapes))
            }],
            relation: None,
        },
        "colors" => Request {
            phrases: vec![Phrase {
                color: Some(rng.below(colors)),
                ..plain(rng.below(shapes))
            }],
            relation: None,
        },
        "position" => {
            let (a, b) = two_shapes(rng);
            Request {
                phrases: vec![plain(a), plain(b)],
                relation: Some(rng.below(world.relations.len())),
            }
        }
        "color_attr" => {
            let (a, b) = two_shapes(rng);
            let ca = rng.below(colors);
            let cb = (ca + 1 + rng.below(colors - 1)) % colors;
            Request {
                phrases: vec![
                    Phrase {
                        color: Some(ca),
                        ..plain(a)
                    },
                    Phrase {
                        color: Some(cb),
                        ..plain(b)
                    },
                ],
                relation: None,
            }
        }
        other => {
            return Err(Error::argument(
                "task",
                format!("`{other}` is not one of {}", TASKS.join(", ")),
            ));
        }
    };
    if extras {
        let tag = request.tag();
        for p in &mut request.phrases {
            if rng.uniform() < 0.3 {
                p.size = Some(rng.below(world.sizes.len()));
            }
            let colorable = matches!(tag, "counting" | "position" | "single_object");
            if colorable && p.color.is_none() && rng.uniform() < 0.4 {
                p.color = Some(rng.below(colors));
            }
        }
    }
    Ok(request)
}

/// The evaluation suite: for each task, up to `per_task` distinct prompts drawn with `seed`
/// (fewer where the world has fewer), in GenEval's metadata form.
pub fn eval_suite(world: &World, per_task: usize, seed: u64) -> Result<Vec<Prompt>> {
    let mut rng = Rng::new(seed);
    let mut out: Vec<Prompt> = vec![];
    for task in TASKS {
        let mut seen = std::collections::BTreeSet::new();
        let mut attempts = 0;
        while seen.len() < per_task && attempts < per_task * 50 {
            attempts += 1;
            let request = sample_request(world, task, false, &mut rng)?;
            let text = request.text(world, &Wording::random(world, &mut rng));
            if seen.insert(text.clone()) {
                out.push(request.metadata(world, text));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World::builtin().unwrap()
    }

    #[test]
    fn captions_parse_back_to_what_they_say() {
        let world = world();
        let mut rng = Rng::new(1);
        for task in TASKS {
            for _ in 0..200 {
                let request = sample_request(&world, task, true, &mut rng).unwrap();
                let text = request.text(&world, &Wording::random(&world, &mut rng));
                let parsed = parse(&world, &text).unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(parsed, request, "{text}");
            }
        }
    }

    #[test]
    fn geneval_wording_and_metadata() {
        let world = world();
        let r = parse(
            &world,
            "a photo of a red circle to the left of a blue square",
        )
        .unwrap();
        let m = r.metadata(&world, "x".into());
        assert_eq!(m.tag, "position");
        assert_eq!(m.include[0].class, "square");
        assert_eq!(m.include[1].position, Some(("left of".into(), 0)));
        let r = parse(&world, "Four triangles.").unwrap();
        let m = r.metadata(&world, "x".into());
        assert_eq!((m.tag.as_str(), m.exclude[0].count), ("counting", 5));
        assert_eq!(
            r.text(&world, &Wording::canonical()),
            "a photo of four triangles"
        );
        let r = parse(&world, "an orange disc and a purple triangle").unwrap();
        assert_eq!(r.tag(), "color_attr");
        assert_eq!(
            r.text(&world, &Wording::canonical()),
            "a photo of an orange circle and a purple triangle"
        );
    }

    #[test]
    fn words_outside_the_world_are_named() {
        let world = world();
        for (text, named) in [
            ("a photo of a dog", "unknown shape `dog`"),
            ("a shiny circle", "unknown word `shiny`"),
            ("five circles", "`five` is not an article or a number"),
            ("three circles and two squares", "5 objects"),
            ("two circles left of a square", "one object to one other"),
            ("a circles", "plural"),
            ("", "nothing to draw"),
        ] {
            let err = parse(&world, text).unwrap_err().to_string();
            assert!(err.contains(named), "{text}: {err}");
        }
    }

    #[test]
    fn hard_negatives_change_one_thing() {
        let world = world();
        let mut rng = Rng::new(3);
        let r = parse(&world, "a red circle left of a blue square").unwrap();
        let negatives = hard_negatives(&world, &r, &mut rng);
        let texts: Vec<String> = negatives
            .iter()
            .map(|n| n.text(&world, &Wording::canonical()))
            .collect();
        assert!(texts.contains(&"a photo of a red circle right of a blue square".to_string()));
        assert!(texts.contains(&"a photo of a blue square left of a red circle".to_string()));
        assert!(texts.contains(&"a photo of a blue circle left of a red square".to_string()));
        assert!(negatives.iter().all(|n| *n != r));
        let r = parse(&world, "three squares").unwrap();
        let counts: Vec<usize> = hard_negatives(&world, &r, &mut rng)
            .iter()
            .map(|n| n.phrases[0].count)
            .collect();
        assert!(counts.contains(&2) && counts.contains(&4));
    }

    #[test]
    fn the_eval_suite_is_seeded_and_covers_every_task() {
        let world = world();
        let a = eval_suite(&world, 100, 43).unwrap();
        assert_eq!(a, eval_suite(&world, 100, 43).unwrap());
        for task in TASKS {
            let n = a.iter().filter(|p| p.tag == task).count();
            assert!(n >= 10, "{task}: {n}");
        }
        for p in &a {
            let again = parse(&world, &p.prompt)
                .unwrap()
                .metadata(&world, p.prompt.clone());
            assert_eq!(&again, p);
        }
    }
}
