//! Synthetic scenes for training and evaluating a small text-to-image model that can edit.
//!
//! A scene is a background (a solid colour, a two-colour gradient or a two-tone texture) with one
//! or two non-overlapping objects (a shape in a colour, at a size and position), a caption that
//! names them left to right ("a red circle and a blue square on a gray background") and a
//! pixel-exact mask per object. Everything is a pure function of a seed and an index, so the
//! training set and the fixed held-out evaluation set are reproducible from two numbers.
//!
//! An [`Edit`] pairs a held-out scene with a target scene that differs in one object: its colour,
//! its shape, or both (an object swap). The ground-truth edit region is the union of the object's
//! masks before and after.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The seed of the held-out evaluation set. Training sets are drawn with other seeds, and every
/// scene's stream mixes seed and index, so the two never share a scene stream.
pub const HELDOUT_SEED: u64 = 0x0000_E7A1_5EED;
/// Seed of the validation edits (`diffedit eval --split validation`).
pub const VALIDATION_SEED: u64 = 0x0000_7A11_DA7E;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Cross,
}

impl Shape {
    pub const ALL: [Shape; 4] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Cross];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Cross => "cross",
        }
    }

    /// Whether the point (px, py) (pixel centres, in pixels) lies in this shape drawn in the
    /// axis-aligned square of side `size` centred on (cx, cy). Sizes and centres are in pixels
    /// and may be fractional; the test is exact, so masks are exactly the painted pixels.
    pub fn contains(self, cx: f64, cy: f64, size: f64, px: f64, py: f64) -> bool {
        let (dx, dy) = (px - cx, py - cy);
        let h = size / 2.0;
        match self {
            Shape::Circle => dx * dx + dy * dy <= h * h,
            Shape::Square => dx.abs() <= h * 0.85 && dy.abs() <= h * 0.85,
            // Apex up; the half-width grows linearly from the apex to the base.
            Shape::Triangle => dy >= -h && dy <= h && dx.abs() <= (dy + h) / 2.0,
            // A plus sign with arms a third of the size wide.
            Shape::Cross => (dx.abs() <= size / 6.0 && dy.abs() <= h) || (dy.abs() <= size / 6.0 && dx.abs() <= h),
        }
    }
}

/// A named colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Colour {
    pub name: &'static str,
    pub rgb: [u8; 3],
}

const fn colour(name: &'static str, rgb: [u8; 3]) -> Colour {
    Colour { name, rgb }
}

/// "an orange circle", "a red circle": the tokenizer sees the article a person would write.
fn with_article(phrase: &str) -> String {
    let vowel = phrase.chars().next().is_some_and(|c| "aeiou".contains(c));
    format!("{} {phrase}", if vowel { "an" } else { "a" })
}

/// Object colours: saturated and far apart, so a nearest-colour classifier reads them reliably.
pub const OBJECT_COLOURS: [Colour; 6] = [
    colour("red", [220, 30, 30]),
    colour("green", [30, 170, 50]),
    colour("blue", [30, 70, 230]),
    colour("yellow", [245, 215, 20]),
    colour("purple", [140, 40, 180]),
    colour("orange", [250, 130, 10]),
];

/// Background colours: desaturated or dark, distinct from every object colour.
pub const BACKGROUND_COLOURS: [Colour; 6] = [
    colour("white", [235, 235, 230]),
    colour("black", [25, 25, 30]),
    colour("gray", [128, 128, 128]),
    colour("pink", [245, 185, 200]),
    colour("cyan", [120, 215, 220]),
    colour("brown", [110, 75, 45]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Texture {
    Striped,
    Checkered,
}

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Background {
    Solid {
        colour: usize,
    },
    /// From `from` to `to`, left to right (`vertical` false) or top to bottom.
    Gradient {
        from: usize,
        to: usize,
        vertical: bool,
    },
    /// The colour and a darker (or, for black, lighter) tone of it.
    Textured {
        colour: usize,
        texture: Texture,
    },
}

impl Background {
    /// The caption's words for it, after "on a".
    pub fn phrase(&self) -> String {
        let c = |i: usize| BACKGROUND_COLOURS[i].name;
        match *self {
            Background::Solid { colour } => format!("{} background", c(colour)),
            Background::Gradient { from, to, .. } => format!("{} and {} gradient background", c(from), c(to)),
            Background::Textured { colour, texture } => {
                let t = match texture {
                    Texture::Striped => "striped",
                    Texture::Checkered => "checkered",
                };
                format!("{} {t} background", c(colour))
            }
        }
    }

    /// The background colour at pixel (x, y) of a `size` x `size` picture.
    pub fn pixel(&self, x: usize, y: usize, size: usize) -> [u8; 3] {
        match *self {
            Background::Solid { colour } => BACKGROUND_COLOURS[colour].rgb,
            Background::Gradient { from, to, vertical } => {
                let (a, b) = (BACKGROUND_COLOURS[from].rgb, BACKGROUND_COLOURS[to].rgb);
                let pos = if vertical { y } else { x };
                let t = pos as f64 / (size.max(2) - 1) as f64;
                std::array::from_fn(|k| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * t).round() as u8)
            }
            Background::Textured { colour, texture } => {
                let base = BACKGROUND_COLOURS[colour].rgb;
                // Periods of a quarter of the picture: coarse enough for a small autoencoder.
                let period = (size / 4).max(2);
                let half = period / 2;
                let alt = match texture {
                    Texture::Striped => (y % period) >= half,
                    Texture::Checkered => ((x % period) >= half) != ((y % period) >= half),
                };
                if !alt {
                    base
                } else if base.iter().map(|&v| v as u32).sum::<u32>() < 150 {
                    base.map(|v| v.saturating_add(45))
                } else {
                    base.map(|v| (v as f64 * 0.78).round() as u8)
                }
            }
        }
    }
}

/// One object: a shape in a colour, in the square of side `size` centred on (cx, cy) (pixels).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Object {
    pub shape: Shape,
    /// Index into [`OBJECT_COLOURS`].
    pub colour: usize,
    pub cx: f64,
    pub cy: f64,
    pub size: f64,
}

impl Object {
    pub fn phrase(&self) -> String {
        format!("{} {}", OBJECT_COLOURS[self.colour].name, self.shape.name())
    }

    pub fn contains(&self, x: usize, y: usize) -> bool {
        self.shape.contains(self.cx, self.cy, self.size, x as f64 + 0.5, y as f64 + 0.5)
    }

    /// The object's pixels in a `size` x `size` picture, row-major.
    pub fn mask(&self, size: usize) -> Vec<bool> {
        (0..size * size).map(|i| self.contains(i % size, i / size)).collect()
    }
}

/// A scene: a background and one or two objects, ordered left to right.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scene {
    pub size: usize,
    pub background: Background,
    pub objects: Vec<Object>,
}

impl Scene {
    /// "a red circle on a gray background", "a red circle and a blue square on a ...".
    pub fn caption(&self) -> String {
        let objs: Vec<String> = self.objects.iter().map(|o| with_article(&o.phrase())).collect();
        format!("{} on {}", objs.join(" and "), with_article(&self.background.phrase()))
    }

    /// The picture as row-major RGB bytes; later objects are painted over earlier ones (objects
    /// never overlap, so the order does not matter).
    pub fn render(&self) -> Vec<u8> {
        let n = self.size;
        let mut out = Vec::with_capacity(n * n * 3);
        for y in 0..n {
            for x in 0..n {
                let mut px = self.background.pixel(x, y, n);
                for o in &self.objects {
                    if o.contains(x, y) {
                        px = OBJECT_COLOURS[o.colour].rgb;
                    }
                }
                out.extend_from_slice(&px);
            }
        }
        out
    }

    /// The background alone, as [`render`](Self::render) would paint it without objects.
    pub fn render_background(&self) -> Vec<u8> {
        let n = self.size;
        (0..n * n).flat_map(|i| self.background.pixel(i % n, i / n, n)).collect()
    }

    /// Per pixel, 0 for background or 1 + the index of the object there.
    pub fn label_map(&self) -> Vec<u8> {
        let n = self.size;
        (0..n * n)
            .map(|i| self.objects.iter().position(|o| o.contains(i % n, i / n)).map(|k| k as u8 + 1).unwrap_or(0))
            .collect()
    }
}

/// One random stream per (seed, index): scenes can be drawn in any order or in parallel.
fn stream(seed: u64, index: u64) -> StdRng {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&index.to_le_bytes());
    s[16..24].copy_from_slice(b"diffedit");
    StdRng::from_seed(s)
}

fn random_background(rng: &mut StdRng) -> Background {
    let n = BACKGROUND_COLOURS.len();
    match rng.gen_range(0..10) {
        0..=4 => Background::Solid { colour: rng.gen_range(0..n) },
        5..=7 => {
            let from = rng.gen_range(0..n);
            let to = (from + rng.gen_range(1..n)) % n;
            Background::Gradient { from, to, vertical: rng.gen_bool(0.5) }
        }
        _ => Background::Textured {
            colour: rng.gen_range(0..n),
            texture: if rng.gen_bool(0.5) { Texture::Striped } else { Texture::Checkered },
        },
    }
}

/// Object sizes as shares of the picture side.
const MIN_SIZE: f64 = 0.28;
const MAX_SIZE: f64 = 0.45;
/// The smallest object size when two objects share the picture.
const MAX_SIZE_TWO: f64 = 0.38;

/// Squares of side `size` around each centre with this gap never overlap, whatever the shapes.
fn apart(a: &Object, b: &Object, gap: f64) -> bool {
    let reach = (a.size + b.size) / 2.0 + gap;
    (a.cx - b.cx).abs() >= reach || (a.cy - b.cy).abs() >= reach
}

fn random_object(rng: &mut StdRng, size: usize, max_share: f64) -> Object {
    let n = size as f64;
    let s = n * rng.gen_range(MIN_SIZE..max_share);
    // Keep the whole bounding square inside the picture, one pixel from the edge.
    let lo = s / 2.0 + 1.0;
    let hi = n - s / 2.0 - 1.0;
    Object {
        shape: Shape::ALL[rng.gen_range(0..Shape::ALL.len())],
        colour: rng.gen_range(0..OBJECT_COLOURS.len()),
        cx: rng.gen_range(lo..hi.max(lo + 1e-9)),
        cy: rng.gen_range(lo..hi.max(lo + 1e-9)),
        size: s,
    }
}

/// Scene `index` of the set drawn with `seed`, `size` x `size` pixels (at least 16).
pub fn scene(seed: u64, index: u64, size: usize) -> Scene {
    let mut rng = stream(seed, index);
    let background = random_background(&mut rng);
    let two = rng.gen_bool(0.4);
    let mut objects = vec![];
    if two {
        // Rejection sampling for two objects that keep a gap; fall back to one object.
        for _ in 0..100 {
            let a = random_object(&mut rng, size, MAX_SIZE_TWO);
            let b = random_object(&mut rng, size, MAX_SIZE_TWO);
            if apart(&a, &b, size as f64 * 0.06) && (a.cx - b.cx).abs() > 1.0 {
                objects = vec![a, b];
                break;
            }
        }
    }
    if objects.is_empty() {
        objects.push(random_object(&mut rng, size, MAX_SIZE));
    }
    objects.sort_by(|a, b| a.cx.total_cmp(&b.cx));
    Scene { size, background, objects }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EditKind {
    /// Same shape, another colour.
    Colour,
    /// Same colour, another shape, same place and size.
    Shape,
    /// Another shape in another colour (the object is replaced).
    Swap,
}

impl EditKind {
    pub const ALL: [EditKind; 3] = [EditKind::Colour, EditKind::Shape, EditKind::Swap];

    pub fn name(self) -> &'static str {
        match self {
            EditKind::Colour => "colour",
            EditKind::Shape => "shape",
            EditKind::Swap => "swap",
        }
    }
}

/// A held-out edit: the source scene, the target scene (one object changed) and which object.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Edit {
    pub index: u64,
    pub kind: EditKind,
    pub source: Scene,
    pub target: Scene,
    /// Which object of the scene changes (the same index in both scenes).
    pub object: usize,
}

impl Edit {
    pub fn source_caption(&self) -> String {
        self.source.caption()
    }

    pub fn target_caption(&self) -> String {
        self.target.caption()
    }

    /// The ground-truth edit region: the union of the object's source and target masks.
    pub fn region(&self) -> Vec<bool> {
        let n = self.source.size;
        let (a, b) = (&self.source.objects[self.object], &self.target.objects[self.object]);
        (0..n * n).map(|i| a.contains(i % n, i / n) || b.contains(i % n, i / n)).collect()
    }

    /// The object as it should be after the edit.
    pub fn target_object(&self) -> &Object {
        &self.target.objects[self.object]
    }
}

/// Edit `index` of the set drawn with `seed`: the kinds take turns (colour, shape, swap, ...), so
/// any prefix of the set is balanced.
pub fn edit(seed: u64, index: u64, size: usize) -> Edit {
    let source = scene(seed, index, size);
    let mut rng = stream(seed ^ 0x005E_ED0F_ED17, index);
    let kind = EditKind::ALL[(index % 3) as usize];
    let object = rng.gen_range(0..source.objects.len());
    let old = source.objects[object];
    let mut new = old;
    let other_colour = |rng: &mut StdRng| (old.colour + rng.gen_range(1..OBJECT_COLOURS.len())) % OBJECT_COLOURS.len();
    let other_shape = |rng: &mut StdRng| {
        let i = Shape::ALL.iter().position(|s| *s == old.shape).unwrap_or(0);
        Shape::ALL[(i + rng.gen_range(1..Shape::ALL.len())) % Shape::ALL.len()]
    };
    match kind {
        EditKind::Colour => new.colour = other_colour(&mut rng),
        EditKind::Shape => new.shape = other_shape(&mut rng),
        EditKind::Swap => {
            new.colour = other_colour(&mut rng);
            new.shape = other_shape(&mut rng);
        }
    }
    let mut target = source.clone();
    target.objects[object] = new;
    Edit { index, kind, source, target, object }
}

/// The first `n` edits of the fixed held-out evaluation set.
pub fn heldout_edits(n: usize, size: usize) -> Vec<Edit> {
    (0..n as u64).map(|i| edit(HELDOUT_SEED, i, size)).collect()
}

/// The first `n` edits of the validation set: drawn like the held-out set from a third seed
/// (neither the training scenes' nor the held-out set's), for choosing edit parameters without
/// looking at the held-out edits.
pub fn validation_edits(n: usize, size: usize) -> Vec<Edit> {
    (0..n as u64).map(|i| edit(VALIDATION_SEED, i, size)).collect()
}

/// What the classifier read in an edit region.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reading {
    /// Index into [`OBJECT_COLOURS`] of the dominant object colour, if any object pixels were found.
    pub colour: Option<usize>,
    pub shape: Option<Shape>,
    /// IoU between the found pixels and the best-fitting shape drawn in their bounding box.
    pub fit: f64,
    /// Object pixels found.
    pub pixels: usize,
}

fn dist2(a: [u8; 3], b: [u8; 3]) -> i32 {
    (0..3).map(|k| (a[k] as i32 - b[k] as i32).pow(2)).sum()
}

/// A deterministic colour and shape classifier for the object in `region` of `image` (row-major
/// RGB, `size` x `size`), given the expected background picture: a pixel belongs to an object
/// when its nearest colour among the object colours and its own background colour is an object
/// colour; the object's colour is the most frequent such colour; its shape is the shape whose
/// drawing in the pixels' bounding square overlaps them best (IoU).
pub fn classify(image: &[u8], background: &[u8], region: &[bool], size: usize) -> Reading {
    let px = |buf: &[u8], i: usize| [buf[3 * i], buf[3 * i + 1], buf[3 * i + 2]];
    let mut counts = [0usize; OBJECT_COLOURS.len()];
    let mut label = vec![None; size * size];
    for i in (0..size * size).filter(|&i| region[i]) {
        let p = px(image, i);
        let (k, d) = OBJECT_COLOURS
            .iter()
            .enumerate()
            .map(|(k, c)| (k, dist2(p, c.rgb)))
            .min_by_key(|&(_, d)| d)
            .expect("six colours");
        if d < dist2(p, px(background, i)) {
            counts[k] += 1;
            label[i] = Some(k);
        }
    }
    let total: usize = counts.iter().sum();
    if total == 0 {
        return Reading { colour: None, shape: None, fit: 0.0, pixels: 0 };
    }
    let colour = (0..counts.len()).max_by_key(|&k| (counts[k], usize::MAX - k)).expect("six colours");
    let found: Vec<bool> = label.iter().map(|l| *l == Some(colour)).collect();
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for i in (0..size * size).filter(|&i| found[i]) {
        let (x, y) = (i % size, i / size);
        x0 = x0.min(x);
        y0 = y0.min(y);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let cx = (x0 + x1 + 1) as f64 / 2.0;
    let cy = (y0 + y1 + 1) as f64 / 2.0;
    let side = ((x1 - x0 + 1).max(y1 - y0 + 1)) as f64;
    let mut best = (Shape::Circle, -1.0);
    for shape in Shape::ALL {
        // Pixel extents round a drawing's box either way, so try boxes a little off the extent.
        for step in 0..12 {
            let s = side * (0.9 + 0.04 * step as f64);
            for (ox, oy) in [(0.0, 0.0), (-0.5, 0.0), (0.5, 0.0), (0.0, -0.5), (0.0, 0.5)] {
                let (mut inter, mut union) = (0usize, 0usize);
                for (i, &hit) in found.iter().enumerate().take(size * size) {
                    let d = shape.contains(cx + ox, cy + oy, s, (i % size) as f64 + 0.5, (i / size) as f64 + 0.5);
                    inter += (d && hit) as usize;
                    union += (d || hit) as usize;
                }
                let iou = inter as f64 / union.max(1) as f64;
                if iou > best.1 {
                    best = (shape, iou);
                }
            }
        }
    }
    Reading { colour: Some(colour), shape: Some(best.0), fit: best.1, pixels: total }
}

/// Whether `reading` is the target object: its colour and shape, and a shape that fits.
pub fn is_success(reading: &Reading, target: &Object) -> bool {
    reading.colour == Some(target.colour) && reading.shape == Some(target.shape) && reading.fit >= 0.5
}

/// Writes scenes `0..count` of the set drawn with `seed` to `out`: `images/NNNNNN.png` (RGB),
/// `masks/NNNNNN.png` (grey, 0 for background, 1 + the object index on its pixels) and
/// `scenes.jsonl`, one JSON object per scene (file names, caption, background, objects).
pub fn write_dataset(out: &std::path::Path, count: usize, seed: u64, size: usize) -> std::io::Result<()> {
    use std::io::Write;
    let to_io = |e: image::ImageError| std::io::Error::other(e.to_string());
    std::fs::create_dir_all(out.join("images"))?;
    std::fs::create_dir_all(out.join("masks"))?;
    let mut index = std::io::BufWriter::new(std::fs::File::create(out.join("scenes.jsonl"))?);
    for i in 0..count {
        let s = scene(seed, i as u64, size);
        let name = format!("{i:06}.png");
        let img = image::RgbImage::from_raw(size as u32, size as u32, s.render()).expect("size*size*3 bytes");
        img.save(out.join("images").join(&name)).map_err(to_io)?;
        let mask = image::GrayImage::from_raw(size as u32, size as u32, s.label_map()).expect("size*size bytes");
        mask.save(out.join("masks").join(&name)).map_err(to_io)?;
        let row = serde_json::json!({
            "index": i,
            "image": format!("images/{name}"),
            "mask": format!("masks/{name}"),
            "caption": s.caption(),
            "background": s.background,
            "objects": s.objects,
        });
        writeln!(index, "{row}")?;
    }
    index.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_reproducible_and_vary() {
        assert_eq!(scene(7, 3, 32), scene(7, 3, 32));
        assert_ne!(scene(7, 3, 32), scene(7, 4, 32));
        assert_ne!(scene(7, 3, 32), scene(8, 3, 32));
    }

    #[test]
    fn captions_name_objects_left_to_right() {
        let s = Scene {
            size: 32,
            background: Background::Solid { colour: 2 },
            objects: vec![
                Object { shape: Shape::Circle, colour: 0, cx: 8.0, cy: 8.0, size: 10.0 },
                Object { shape: Shape::Square, colour: 2, cx: 24.0, cy: 20.0, size: 10.0 },
            ],
        };
        assert_eq!(s.caption(), "a red circle and a blue square on a gray background");
        let orange = Scene { objects: vec![Object { colour: 5, ..s.objects[0] }], ..s.clone() };
        assert_eq!(orange.caption(), "an orange circle on a gray background");
        let g = Background::Gradient { from: 0, to: 1, vertical: true };
        assert_eq!(g.phrase(), "white and black gradient background");
        let t = Background::Textured { colour: 5, texture: Texture::Checkered };
        assert_eq!(t.phrase(), "brown checkered background");
    }

    #[test]
    fn masks_are_the_painted_pixels_and_objects_do_not_overlap() {
        for i in 0..300 {
            let s = scene(1, i, 32);
            let img = s.render();
            let labels = s.label_map();
            for (k, o) in s.objects.iter().enumerate() {
                let m = o.mask(32);
                let area = m.iter().filter(|&&b| b).count();
                assert!(area >= 20, "scene {i} object {k} has {area} pixels");
                for p in 0..32 * 32 {
                    if m[p] {
                        assert_eq!(labels[p], k as u8 + 1, "scene {i}: objects overlap");
                        assert_eq!(&img[3 * p..3 * p + 3], &OBJECT_COLOURS[o.colour].rgb);
                    }
                }
            }
            let sorted = s.objects.windows(2).all(|w| w[0].cx <= w[1].cx);
            assert!(sorted);
        }
    }

    #[test]
    fn edits_change_what_their_kind_says() {
        let edits = heldout_edits(60, 32);
        for e in &edits {
            let (a, b) = (&e.source.objects[e.object], e.target_object());
            assert_eq!((a.cx, a.cy, a.size), (b.cx, b.cy, b.size));
            match e.kind {
                EditKind::Colour => assert!(a.colour != b.colour && a.shape == b.shape),
                EditKind::Shape => assert!(a.colour == b.colour && a.shape != b.shape),
                EditKind::Swap => assert!(a.colour != b.colour && a.shape != b.shape),
            }
            assert_ne!(e.source_caption(), e.target_caption());
            assert_eq!(e.source.background, e.target.background);
        }
        assert_eq!(edits.iter().filter(|e| e.kind == EditKind::Shape).count(), 20);
    }

    #[test]
    fn the_classifier_reads_every_clean_target() {
        for e in heldout_edits(300, 32) {
            let img = e.target.render();
            let bg = e.target.render_background();
            let r = classify(&img, &bg, &e.region(), 32);
            assert!(is_success(&r, e.target_object()), "edit {}: {:?} for {:?}", e.index, r, e.target_object());
            // The unedited source is not the target.
            let r = classify(&e.source.render(), &bg, &e.region(), 32);
            assert!(
                !is_success(&r, e.target_object()),
                "edit {}: source read as target: {:?} {:?} {:?}",
                e.index,
                r,
                e.source.objects[e.object],
                e.target_object()
            );
        }
    }
}
