//! Pictures for people: masks, heat maps and overlays at the input's size.

pub mod colormaps;
pub mod edit_grid;
pub mod figure;

use image::{Rgb, RgbImage};

/// A colour map lookup for v in [0,1].
pub fn colormap(table: &[[u8; 3]; 256], v: f32) -> Rgb<u8> {
    let i = (v.clamp(0.0, 1.0) * 255.0).round() as usize;
    Rgb(table[i])
}

/// Bilinear sampling of a `h`x`w` map at the centre of output pixel (x, y) of an `ow`x`oh`
/// picture (align_corners = false, as PyTorch's interpolate).
fn sample_bilinear(values: &[f32], h: usize, w: usize, x: u32, y: u32, ow: u32, oh: u32) -> f32 {
    let sx = ((x as f32 + 0.5) * w as f32 / ow as f32 - 0.5).clamp(0.0, (w - 1) as f32);
    let sy = ((y as f32 + 0.5) * h as f32 / oh as f32 - 0.5).clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
    let at = |yy: usize, xx: usize| values[yy * w + xx];
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
    let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Nearest sampling: which latent cell covers output pixel (x, y).
fn sample_nearest(values: &[f32], h: usize, w: usize, x: u32, y: u32, ow: u32, oh: u32) -> f32 {
    let sx = ((x as u64 * w as u64) / ow as u64).min(w as u64 - 1) as usize;
    let sy = ((y as u64 * h as u64) / oh as u64).min(h as u64 - 1) as usize;
    values[sy * w + sx]
}

/// The binary mask at `width`x`height`: white where the picture may change.
pub fn mask_image(mask: &[f32], h: usize, w: usize, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let v = if sample_nearest(mask, h, w, x, y, width, height) > 0.5 { 255 } else { 0 };
        Rgb([v, v, v])
    })
}

/// A map in [0,1] (the normalised difference) in the magma colour map, smoothly upscaled.
pub fn heatmap_image(values: &[f32], h: usize, w: usize, width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        colormap(&colormaps::MAGMA, sample_bilinear(values, h, w, x, y, width, height))
    })
}

/// The source with the mask tinted over it (60% picture, 40% red inside the mask), as the
/// tutorial's overlay.
pub fn overlay_image(source: &RgbImage, mask: &[f32], h: usize, w: usize) -> RgbImage {
    let (width, height) = source.dimensions();
    RgbImage::from_fn(width, height, |x, y| {
        let p = source.get_pixel(x, y).0;
        let m = sample_nearest(mask, h, w, x, y, width, height) > 0.5;
        let tint = if m { [255.0, 0.0, 0.0] } else { [0.0, 0.0, 0.0] };
        let mix = |c: usize| {
            if m {
                (p[c] as f32 * 0.6 + tint[c] * 0.4).round() as u8
            } else {
                p[c]
            }
        };
        Rgb([mix(0), mix(1), mix(2)])
    })
}

/// Share of cells set in a 0/1 mask.
pub fn coverage(mask: &[f32]) -> f64 {
    if mask.is_empty() {
        return 0.0;
    }
    mask.iter().filter(|&&v| v > 0.5).count() as f64 / mask.len() as f64
}
