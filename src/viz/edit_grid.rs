//! A grid of edits for people: a title line per column, and per row the edit's prompts above its
//! pictures and a verdict under those that have one (green when passed, red when failed).
//! `diffedit eval --figure` draws one row per evaluated edit.

use image::{Rgb, RgbImage};

use super::figure::{draw_text, fit_text, line_height, text_width, upscale_nearest, Style};

/// The text under one picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub text: String,
    /// `Some(true)` green, `Some(false)` red, `None` the plain text colour.
    pub passed: Option<bool>,
}

/// One edit: two lines of text above its pictures (e.g. the source and the target prompt) and
/// an optional note under each picture.
#[derive(Debug, Clone)]
pub struct EditRow {
    pub lines: [String; 2],
    pub pictures: Vec<RgbImage>,
    pub notes: Vec<Option<Note>>,
}

/// Sizes of the grid's text.
const COLUMN_PX: f32 = 16.0;
const LINE_PX: f32 = 13.0;
const NOTE_PX: f32 = 13.0;
const MIN_PX: f32 = 10.0;
const PASS: Rgb<u8> = Rgb([20, 125, 45]);
const FAIL: Rgb<u8> = Rgb([190, 30, 30]);

/// Draws `rows` under the column titles `columns`, every picture enlarged `zoom` times
/// (nearest neighbour), with `heading` above everything.
pub fn edit_grid(heading: &str, columns: &[&str], rows: &[EditRow], zoom: u32, style: &Style) -> RgbImage {
    let cell = rows.iter().flat_map(|r| &r.pictures).map(|p| p.width().max(p.height()) * zoom).max().unwrap_or(64);
    let n_cols = columns.len().max(rows.iter().map(|r| r.pictures.len()).max().unwrap_or(0)) as u32;
    let (m, gap) = (style.margin, style.margin / 2);
    let width = 2 * m + n_cols * cell + n_cols.saturating_sub(1) * gap;
    let (heading_h, column_h) = (line_height(style.heading_px), line_height(COLUMN_PX));
    let (line_h, note_h) = (line_height(LINE_PX), line_height(NOTE_PX));
    let row_h = |r: &EditRow| {
        let notes = r.notes.iter().any(Option::is_some);
        2 * line_h + 4 + cell + if notes { note_h + 2 } else { 0 }
    };
    let height = m + heading_h + m / 2 + column_h + 4 + rows.iter().map(|r| row_h(r) + m).sum::<u32>() + m / 2;
    let mut img = RgbImage::from_pixel(width, height, style.background);
    let inner = width - 2 * m;
    let column_x = |c: u32| m + c * (cell + gap);

    let (text, px) = fit_text(heading, inner, style.heading_px, MIN_PX);
    draw_text(&mut img, &text, (m + (inner - text_width(&text, px)) / 2) as i64, m as i64, px, style.text);
    let mut y = m + heading_h + m / 2;
    for (c, title) in columns.iter().enumerate() {
        let (text, px) = fit_text(title, cell, COLUMN_PX, MIN_PX);
        let x = column_x(c as u32) + (cell - text_width(&text, px)) / 2;
        draw_text(&mut img, &text, x as i64, y as i64, px, style.text);
    }
    y += column_h + 4;

    for row in rows {
        for (k, line) in row.lines.iter().enumerate() {
            let (text, px) = fit_text(line, inner, LINE_PX, MIN_PX);
            draw_text(&mut img, &text, m as i64, (y + k as u32 * line_h) as i64, px, style.text);
        }
        let top = y + 2 * line_h + 4;
        for (c, picture) in row.pictures.iter().enumerate() {
            let big = upscale_nearest(picture, zoom);
            let (w, h) = big.dimensions();
            let x = column_x(c as u32) + (cell - w) / 2;
            image::imageops::replace(&mut img, &big, x as i64, (top + (cell - h) / 2) as i64);
            frame(&mut img, x, top + (cell - h) / 2, w, h, style.frame);
        }
        for (c, note) in row.notes.iter().enumerate() {
            let Some(note) = note else { continue };
            let colour = match note.passed {
                Some(true) => PASS,
                Some(false) => FAIL,
                None => style.text,
            };
            let (text, px) = fit_text(&note.text, cell, NOTE_PX, MIN_PX);
            let x = column_x(c as u32) + (cell - text_width(&text, px)) / 2;
            draw_text(&mut img, &text, x as i64, (top + cell + 2) as i64, px, colour);
        }
        y += row_h(row) + m;
    }
    img
}

/// A 1-pixel frame just outside the picture at (x, y), so light pictures keep their edge.
fn frame(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, colour: Rgb<u8>) {
    let (x0, y0, x1, y1) = (x as i64 - 1, y as i64 - 1, (x + w) as i64, (y + h) as i64);
    let mut put = |px: i64, py: i64| {
        if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
            img.put_pixel(px as u32, py as u32, colour);
        }
    };
    for px in x0..=x1 {
        put(px, y0);
        put(px, y1);
    }
    for py in y0..=y1 {
        put(x0, py);
        put(x1, py);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_stack_under_the_titles_and_notes_take_their_colour() {
        let style = Style::default();
        let pic = RgbImage::from_pixel(8, 8, Rgb([0, 0, 255]));
        let row = |passed| EditRow {
            lines: ["source: a".into(), "target: b".into()],
            pictures: vec![pic.clone(), pic.clone()],
            notes: vec![None, Some(Note { text: "passed".into(), passed: Some(passed) })],
        };
        let one = edit_grid("heading", &["a", "b"], &[row(true)], 4, &style);
        let two = edit_grid("heading", &["a", "b"], &[row(true), row(false)], 4, &style);
        assert_eq!(one.width(), two.width());
        assert!(two.height() > one.height() + 32, "a second row adds at least its pictures");
        // Antialiased glyphs: look for pixels leaning to the verdict colours.
        let green = |img: &RgbImage| img.pixels().filter(|p| p.0[1] as i32 > p.0[0] as i32 + 40).count();
        let red = |img: &RgbImage| img.pixels().filter(|p| p.0[0] as i32 > p.0[1] as i32 + 60).count();
        assert!(green(&one) > 20 && red(&one) == 0, "one passed note");
        assert!(green(&two) == green(&one) && red(&two) > 20, "a passed and a failed note");
        // Every picture is drawn whole, 32x32 blue.
        let blue = two.pixels().filter(|p| **p == Rgb([0, 0, 255])).count();
        assert_eq!(blue, 4 * 32 * 32);
    }
}
