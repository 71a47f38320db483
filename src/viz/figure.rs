//! Figures for people: titled tiles laid out in strips and grids, colour bars with tick labels,
//! and text drawn with DejaVu Sans (shipped in `assets/fonts/`, Bitstream Vera licence).
//!
//! The tiny test models make 64x64 pictures; [`Style::upscale`] enlarges small pictures by an
//! integer factor with nearest-neighbour sampling so titles fit above them and pixels stay crisp.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, Glyph, PxScale, ScaleFont};
use image::{Rgb, RgbImage};

const FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    // The bytes are compiled in and checked by a unit test, so this cannot fail at run time.
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).expect("bundled DejaVuSans.ttf parses"))
}

/// Glyphs of one line of `text` at `px` pixels, positioned from x = 0 on the baseline y = 0,
/// with kerning; and the line's advance width.
fn layout_line(text: &str, px: f32) -> (Vec<Glyph>, f32) {
    let scaled = font().as_scaled(PxScale::from(px));
    let mut glyphs = Vec::with_capacity(text.len());
    let mut x = 0.0f32;
    let mut previous = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = previous {
            x += scaled.kern(p, id);
        }
        glyphs.push(id.with_scale_and_position(px, point(x, 0.0)));
        x += scaled.h_advance(id);
        previous = Some(id);
    }
    (glyphs, x)
}

/// Width in pixels of `text` drawn at `px`.
pub fn text_width(text: &str, px: f32) -> u32 {
    layout_line(text, px).1.ceil() as u32
}

/// Height of a line of text at `px`: ascent to descent.
pub fn line_height(px: f32) -> u32 {
    let scaled = font().as_scaled(PxScale::from(px));
    (scaled.ascent() - scaled.descent()).ceil() as u32
}

/// Draws one line of `text` with the top of its line box at (`x`, `y`), blending `color` over
/// the picture by glyph coverage (antialiased). Pixels outside the picture are skipped.
pub fn draw_text(img: &mut RgbImage, text: &str, x: i64, y: i64, px: f32, color: Rgb<u8>) {
    let ascent = font().as_scaled(PxScale::from(px)).ascent();
    let (glyphs, _) = layout_line(text, px);
    let (w, h) = (img.width() as i64, img.height() as i64);
    for g in glyphs {
        let Some(outlined) = font().outline_glyph(g) else { continue };
        let bounds = outlined.px_bounds();
        let (gx, gy) = (x + bounds.min.x as i64, y + (bounds.min.y + ascent).round() as i64);
        outlined.draw(|dx, dy, coverage| {
            let (px_x, px_y) = (gx + dx as i64, gy + dy as i64);
            if px_x < 0 || px_y < 0 || px_x >= w || px_y >= h {
                return;
            }
            let c = coverage.clamp(0.0, 1.0);
            let p = img.get_pixel_mut(px_x as u32, px_y as u32);
            for k in 0..3 {
                p.0[k] = (p.0[k] as f32 * (1.0 - c) + color.0[k] as f32 * c).round() as u8;
            }
        });
    }
}

/// `text` at the largest size in [`min_px`, `px`] (half-pixel steps) that fits `max_width`; if
/// even `min_px` is too wide, the text is cut and ends with an ellipsis.
pub fn fit_text(text: &str, max_width: u32, px: f32, min_px: f32) -> (String, f32) {
    let mut size = px;
    while size > min_px && text_width(text, size) > max_width {
        size -= 0.5;
    }
    let size = size.max(min_px);
    if text_width(text, size) <= max_width {
        return (text.to_string(), size);
    }
    let chars: Vec<char> = text.chars().collect();
    for keep in (0..chars.len()).rev() {
        let candidate: String = chars[..keep].iter().collect::<String>() + "…";
        if text_width(&candidate, size) <= max_width {
            return (candidate, size);
        }
    }
    (String::new(), size)
}

/// Sizes and colours of figures.
#[derive(Debug, Clone)]
pub struct Style {
    /// Blank space around the figure and between tiles.
    pub margin: u32,
    /// Tile titles.
    pub title_px: f32,
    /// Smallest size titles shrink to before they are cut.
    pub min_title_px: f32,
    /// The figure's heading, above all tiles.
    pub heading_px: f32,
    /// Colour bar tick labels.
    pub label_px: f32,
    /// Space between a title and its picture.
    pub title_gap: u32,
    /// Pictures whose long side is below this are enlarged by an integer factor.
    pub min_side: u32,
    pub background: Rgb<u8>,
    pub text: Rgb<u8>,
    /// 1-pixel frame drawn around each tile's picture.
    pub frame: Rgb<u8>,
    /// Width of the colour ramp of a colour bar.
    pub colorbar_width: u32,
}

impl Default for Style {
    fn default() -> Self {
        Self {
            margin: 16,
            title_px: 20.0,
            min_title_px: 12.0,
            heading_px: 22.0,
            label_px: 14.0,
            title_gap: 6,
            min_side: 256,
            background: Rgb([255, 255, 255]),
            text: Rgb([20, 20, 20]),
            frame: Rgb([150, 150, 150]),
            colorbar_width: 16,
        }
    }
}

impl Style {
    /// The integer factor that brings a picture's long side to at least `min_side`.
    pub fn scale_factor(&self, width: u32, height: u32) -> u32 {
        let long = width.max(height).max(1);
        if long >= self.min_side {
            1
        } else {
            self.min_side.div_ceil(long)
        }
    }

    /// Small pictures enlarged with nearest-neighbour sampling (each pixel becomes a k x k block).
    pub fn upscale(&self, img: &RgbImage) -> RgbImage {
        let k = self.scale_factor(img.width(), img.height());
        upscale_nearest(img, k)
    }
}

/// Each pixel repeated `k` x `k` times.
pub fn upscale_nearest(img: &RgbImage, k: u32) -> RgbImage {
    if k <= 1 {
        return img.clone();
    }
    RgbImage::from_fn(img.width() * k, img.height() * k, |x, y| *img.get_pixel(x / k, y / k))
}

/// A picture and the title drawn above it.
#[derive(Debug, Clone)]
pub struct Tile {
    pub title: String,
    pub image: RgbImage,
}

impl Tile {
    /// A tile showing `image` as it is.
    pub fn new(title: impl Into<String>, image: RgbImage) -> Self {
        Self { title: title.into(), image }
    }

    /// A tile showing `image` enlarged per `style` when small.
    pub fn picture(title: impl Into<String>, image: &RgbImage, style: &Style) -> Self {
        Self { title: title.into(), image: style.upscale(image) }
    }
}

/// Where a tile's picture landed in a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// A laid-out figure and the place of each tile's picture in it.
#[derive(Debug, Clone)]
pub struct Figure {
    pub image: RgbImage,
    pub tiles: Vec<Rect>,
}

/// Column widths, row heights and the figure's size for pictures of `sizes` in `columns`
/// columns: margins around and between cells, a title line plus gap above each picture, and a
/// heading line above everything when `heading` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GridLayout {
    pub columns: usize,
    pub rows: usize,
    pub column_widths: Vec<u32>,
    /// Height of each row's pictures (titles excluded).
    pub row_heights: Vec<u32>,
    pub title_height: u32,
    pub heading_height: u32,
    pub width: u32,
    pub height: u32,
}

impl GridLayout {
    pub fn new(sizes: &[(u32, u32)], columns: usize, heading: bool, style: &Style) -> Self {
        let n = sizes.len();
        let columns = columns.clamp(1, n.max(1));
        let rows = n.div_ceil(columns).max(1);
        let mut column_widths = vec![0u32; columns];
        let mut row_heights = vec![0u32; rows];
        for (i, &(w, h)) in sizes.iter().enumerate() {
            column_widths[i % columns] = column_widths[i % columns].max(w);
            row_heights[i / columns] = row_heights[i / columns].max(h);
        }
        let title_height = line_height(style.title_px);
        let heading_height = if heading { line_height(style.heading_px) + style.margin / 2 } else { 0 };
        let m = style.margin;
        let width = column_widths.iter().sum::<u32>() + m * (columns as u32 + 1);
        let height = heading_height
            + row_heights.iter().map(|h| h + title_height + style.title_gap).sum::<u32>()
            + m * (rows as u32 + 1);
        Self { columns, rows, column_widths, row_heights, title_height, heading_height, width, height }
    }

    /// Top-left corner of cell (row, column): where its title line starts.
    pub fn cell_origin(&self, row: usize, column: usize, style: &Style) -> (u32, u32) {
        let m = style.margin;
        let x = m + self.column_widths[..column].iter().map(|w| w + m).sum::<u32>();
        let y = m
            + self.heading_height
            + self.row_heights[..row].iter().map(|h| h + self.title_height + style.title_gap + m).sum::<u32>();
        (x, y)
    }
}

/// Tiles in rows of `columns`, each picture centred in its column under its title, with an
/// optional heading line over the whole figure.
pub fn grid(tiles: &[Tile], columns: usize, heading: Option<&str>, style: &Style) -> Figure {
    let sizes: Vec<(u32, u32)> = tiles.iter().map(|t| t.image.dimensions()).collect();
    let layout = GridLayout::new(&sizes, columns, heading.is_some(), style);
    let mut image = RgbImage::from_pixel(layout.width, layout.height, style.background);
    if let Some(text) = heading {
        let max_w = layout.width - 2 * style.margin;
        let (text, px) = fit_text(text, max_w, style.heading_px, style.min_title_px);
        let x = (layout.width - text_width(&text, px)) / 2;
        draw_text(&mut image, &text, x as i64, style.margin as i64, px, style.text);
    }
    let mut rects = Vec::with_capacity(tiles.len());
    for (i, tile) in tiles.iter().enumerate() {
        let (row, col) = (i / layout.columns, i % layout.columns);
        let (cx, cy) = layout.cell_origin(row, col, style);
        let cell_w = layout.column_widths[col];
        let (text, px) = fit_text(&tile.title, cell_w, style.title_px, style.min_title_px);
        // Shrunk titles stay vertically centred on the title line.
        let ty = cy + (layout.title_height - line_height(px)) / 2;
        draw_text(&mut image, &text, (cx + (cell_w - text_width(&text, px)) / 2) as i64, ty as i64, px, style.text);
        let (w, h) = tile.image.dimensions();
        let rect =
            Rect { x: cx + (cell_w - w) / 2, y: cy + layout.title_height + style.title_gap, width: w, height: h };
        image::imageops::replace(&mut image, &tile.image, rect.x as i64, rect.y as i64);
        draw_frame(&mut image, rect, style.frame);
        rects.push(rect);
    }
    Figure { image, tiles: rects }
}

/// All tiles in one row.
pub fn strip(tiles: &[Tile], heading: Option<&str>, style: &Style) -> Figure {
    grid(tiles, tiles.len().max(1), heading, style)
}

/// A 1-pixel rectangle just outside `r` (in the margin), so the tile's edge shows even where the
/// picture is as light as the background.
fn draw_frame(img: &mut RgbImage, r: Rect, color: Rgb<u8>) {
    let (x0, y0) = (r.x as i64 - 1, r.y as i64 - 1);
    let (x1, y1) = ((r.x + r.width) as i64, (r.y + r.height) as i64);
    let mut put = |x: i64, y: i64| {
        if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
            img.put_pixel(x as u32, y as u32, color);
        }
    };
    for x in x0..=x1 {
        put(x, y0);
        put(x, y1);
    }
    for y in y0..=y1 {
        put(x0, y);
        put(x1, y);
    }
}

/// Label of a tick value: "0", "0.25", "0.5", "1".
pub fn tick_label(v: f32) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// A vertical colour bar `height` pixels tall for values in [0,1] (1 at the top) in the colour
/// map `table`, with a tick mark and a label at each of `ticks`, drawn on `style.background`.
pub fn colorbar(table: &[[u8; 3]; 256], height: u32, ticks: &[f32], style: &Style) -> RgbImage {
    let bar_w = style.colorbar_width;
    let tick_len = 4;
    let label_gap = 3;
    let labels: Vec<String> = ticks.iter().map(|&t| tick_label(t)).collect();
    let label_w = labels.iter().map(|l| text_width(l, style.label_px)).max().unwrap_or(0);
    let width = 1 + bar_w + 1 + tick_len + label_gap + label_w + 1;
    let height = height.max(2);
    let mut img = RgbImage::from_pixel(width, height, style.background);
    // The ramp sits inside a 1-pixel frame, its first row 1 and its last 0, as the ticks.
    let inner = height - 2;
    for y in 0..inner {
        let v = 1.0 - y as f32 / (inner - 1).max(1) as f32;
        let c = super::colormap(table, v);
        for x in 0..bar_w {
            img.put_pixel(1 + x, 1 + y, c);
        }
    }
    draw_frame(&mut img, Rect { x: 1, y: 1, width: bar_w, height: inner }, style.frame);
    let lh = line_height(style.label_px) as i64;
    for (t, label) in ticks.iter().zip(&labels) {
        let y = 1 + ((1.0 - t.clamp(0.0, 1.0)) * (inner - 1) as f32).round() as u32;
        for x in 0..tick_len {
            img.put_pixel(bar_w + 2 + x, y, style.text);
        }
        // Labels are centred on their tick but kept inside the bar's height.
        let ly = (y as i64 - lh / 2).clamp(0, (height as i64 - lh).max(0));
        draw_text(&mut img, label, (bar_w + 2 + tick_len + label_gap) as i64, ly, style.label_px, style.text);
    }
    img
}

/// `picture` with a colour bar of its height to its right.
pub fn with_colorbar(picture: &RgbImage, table: &[[u8; 3]; 256], ticks: &[f32], style: &Style) -> RgbImage {
    let gap = 8;
    let bar = colorbar(table, picture.height(), ticks, style);
    let mut out = RgbImage::from_pixel(picture.width() + gap + bar.width(), picture.height(), style.background);
    image::imageops::replace(&mut out, picture, 0, 0);
    image::imageops::replace(&mut out, &bar, (picture.width() + gap) as i64, 0);
    out
}

/// The ticks a colour bar of the normalised difference shows.
pub const UNIT_TICKS: [f32; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// A map of values in [0,1] on an `h` x `w` grid as gray levels at `width` x `height`, each
/// cell a block (nearest sampling): the soft mask.
pub fn gray_image(values: &[f32], h: usize, w: usize, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let sx = ((x as u64 * w as u64) / width as u64).min(w as u64 - 1) as usize;
        let sy = ((y as u64 * h as u64) / height as u64).min(h as u64 - 1) as usize;
        let v = (values[sy * w + sx].clamp(0.0, 1.0) * 255.0).round() as u8;
        Rgb([v, v, v])
    })
}

/// The normalised difference (values in [0,1] on an `h` x `w` grid) for a picture of `width` x
/// `height`: rendered in magma directly at the displayed size (smooth, not blocky) with a colour
/// bar from 0 to 1.
pub fn heatmap_tile(
    title: impl Into<String>,
    values: &[f32],
    h: usize,
    w: usize,
    width: u32,
    height: u32,
    style: &Style,
) -> Tile {
    let k = style.scale_factor(width, height);
    let heat = super::heatmap_image(values, h, w, width * k, height * k);
    Tile::new(title, with_colorbar(&heat, &super::colormaps::MAGMA, &UNIT_TICKS, style))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts tiles the way a reader of the PNG would: columns whose every pixel in the band of
    /// rows `y0..y1` is background separate tiles.
    fn count_tiles_in_band(img: &RgbImage, y0: u32, y1: u32, bg: Rgb<u8>) -> usize {
        let mut count = 0;
        let mut inside = false;
        for x in 0..img.width() {
            let blank = (y0..y1).all(|y| *img.get_pixel(x, y) == bg);
            if !blank && !inside {
                count += 1;
            }
            inside = !blank;
        }
        count
    }

    #[test]
    fn bundled_font_parses_and_measures() {
        assert!(FontRef::try_from_slice(FONT_BYTES).is_ok());
        let w = text_width("threshold 0.5", 20.0);
        assert!((100..160).contains(&w), "width {w}");
        assert_eq!(text_width("", 20.0), 0);
        assert!(line_height(20.0) >= 20 && line_height(20.0) <= 26, "{}", line_height(20.0));
    }

    #[test]
    fn text_is_drawn_inside_its_box() {
        let mut img = RgbImage::from_pixel(200, 40, Rgb([255, 255, 255]));
        draw_text(&mut img, "Mask 23.4%", 10, 5, 20.0, Rgb([0, 0, 0]));
        let dark: Vec<(u32, u32)> =
            img.enumerate_pixels().filter(|(_, _, p)| p.0[0] < 128).map(|(x, y, _)| (x, y)).collect();
        assert!(dark.len() > 100, "text has ink");
        let w = text_width("Mask 23.4%", 20.0);
        let lh = line_height(20.0);
        assert!(dark.iter().all(|&(x, y)| x >= 10 && x <= 10 + w && y >= 5 && y <= 5 + lh));
    }

    #[test]
    fn long_titles_shrink_then_get_an_ellipsis() {
        let (t, px) = fit_text("short", 200, 20.0, 12.0);
        assert_eq!((t.as_str(), px), ("short", 20.0));
        let long = "a very long title that cannot possibly fit in a small tile";
        let (t, px) = fit_text(long, 100, 20.0, 12.0);
        assert_eq!(px, 12.0);
        assert!(t.ends_with('…') && text_width(&t, px) <= 100, "{t}");
        let (t, px) = fit_text("twenty-ish width", text_width("twenty-ish width", 16.0), 20.0, 12.0);
        assert_eq!((t.as_str(), px), ("twenty-ish width", 16.0));
    }

    #[test]
    fn small_pictures_are_enlarged_by_whole_factors() {
        let s = Style::default();
        assert_eq!(s.scale_factor(64, 64), 4);
        assert_eq!(s.scale_factor(96, 64), 3);
        assert_eq!(s.scale_factor(512, 512), 1);
        assert_eq!(s.scale_factor(200, 100), 2);
        let img = RgbImage::from_fn(2, 2, |x, y| Rgb([(x * 100) as u8, (y * 100) as u8, 7]));
        let up = upscale_nearest(&img, 3);
        assert_eq!(up.dimensions(), (6, 6));
        assert_eq!(*up.get_pixel(2, 2), Rgb([0, 0, 7]));
        assert_eq!(*up.get_pixel(3, 5), Rgb([100, 100, 7]));
    }

    #[test]
    fn strip_layout_sizes_follow_the_margins() {
        let s = Style::default();
        let th = line_height(s.title_px);
        let tiles: Vec<Tile> = (0..5)
            .map(|i| Tile::picture(format!("0.{}", i + 3), &RgbImage::from_pixel(64, 64, Rgb([40, 80, 120])), &s))
            .collect();
        let fig = strip(&tiles, None, &s);
        assert_eq!(fig.tiles.len(), 5);
        assert_eq!(fig.image.width(), 5 * 256 + 6 * 16);
        assert_eq!(fig.image.height(), 16 + th + 6 + 256 + 16);
        assert_eq!(fig.tiles[0], Rect { x: 16, y: 16 + th + 6, width: 256, height: 256 });
        assert_eq!(fig.tiles[4].x, 16 + 4 * (256 + 16));
        assert_eq!(*fig.image.get_pixel(16 + 10, 16 + th + 6 + 10), Rgb([40, 80, 120]));
        let band = (fig.tiles[0].y, fig.tiles[0].y + 256);
        assert_eq!(count_tiles_in_band(&fig.image, band.0, band.1, s.background), 5);
    }

    #[test]
    fn grid_wraps_rows_and_centres_narrow_pictures() {
        let s = Style::default();
        let th = line_height(s.title_px);
        let hh = line_height(s.heading_px) + s.margin / 2;
        let mut tiles: Vec<Tile> =
            (0..4).map(|i| Tile::new(format!("t{i}"), RgbImage::from_pixel(100, 80, Rgb([0, 0, 0])))).collect();
        tiles.push(Tile::new("wide", RgbImage::from_pixel(140, 50, Rgb([0, 0, 0]))));
        let fig = grid(&tiles, 3, Some("heading"), &s);
        // Columns: 140 (tile 1 and the wide tile 4), 100, 100; rows 80 and 80 (tiles 3 and 4).
        assert_eq!(fig.image.width(), 100 + 140 + 100 + 4 * 16);
        assert_eq!(fig.image.height(), hh + 2 * (th + 6 + 80) + 3 * 16);
        assert_eq!(fig.tiles[0].x, 16);
        assert_eq!(fig.tiles[1].x, 16 + 100 + 16 + 20);
        assert_eq!(fig.tiles[3].y, 16 + hh + th + 6 + 80 + 16 + th + 6);
        assert_eq!(fig.tiles[4], Rect { x: 16 + 100 + 16, y: fig.tiles[3].y, width: 140, height: 50 });
        let top = (fig.tiles[0].y, fig.tiles[0].y + 80);
        assert_eq!(count_tiles_in_band(&fig.image, top.0, top.1, s.background), 3);
        let bottom = (fig.tiles[3].y, fig.tiles[3].y + 50);
        assert_eq!(count_tiles_in_band(&fig.image, bottom.0, bottom.1, s.background), 2);
    }

    #[test]
    fn white_pictures_still_count_as_tiles() {
        let s = Style::default();
        let tiles: Vec<Tile> = (0..3).map(|_| Tile::new("", RgbImage::from_pixel(50, 50, s.background))).collect();
        let fig = strip(&tiles, None, &s);
        let r = fig.tiles[0];
        assert_eq!(count_tiles_in_band(&fig.image, r.y - 1, r.y + r.height + 1, s.background), 3);
    }

    #[test]
    fn colorbar_runs_from_the_map_top_to_bottom_with_labels() {
        let s = Style::default();
        let bar = colorbar(&super::super::colormaps::MAGMA, 256, &UNIT_TICKS, &s);
        assert_eq!(bar.height(), 256);
        let labels_w = ["0", "0.25", "0.5", "0.75", "1"].iter().map(|l| text_width(l, s.label_px)).max().unwrap();
        assert_eq!(bar.width(), 1 + 16 + 1 + 4 + 3 + labels_w + 1);
        let top = super::super::colormaps::MAGMA[255];
        let bottom = super::super::colormaps::MAGMA[0];
        assert_eq!(bar.get_pixel(8, 1).0, top);
        assert_eq!(bar.get_pixel(8, 254).0, bottom);
        // Label ink right of the ticks.
        let ink = (0..bar.height())
            .flat_map(|y| (24..bar.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| bar.get_pixel(x, y).0[0] < 128)
            .count();
        assert!(ink > 50);
        let composed = with_colorbar(
            &RgbImage::from_pixel(256, 256, Rgb([1, 2, 3])),
            &super::super::colormaps::VIRIDIS,
            &UNIT_TICKS,
            &s,
        );
        assert_eq!(composed.dimensions(), (256 + 8 + bar.width(), 256));
    }

    #[test]
    fn tick_labels_are_short() {
        let l: Vec<String> = UNIT_TICKS.iter().map(|&t| tick_label(t)).collect();
        assert_eq!(l, vec!["0", "0.25", "0.5", "0.75", "1"]);
    }
}
