//! Writing an edit back into the picture it came from, at that picture's own resolution.
//!
//! The model edits a copy of the picture at its working size (512 px on the long side for SD
//! 1.x), and everything it returns went through the VAE: outside the mask the decoded picture is
//! the VAE's reconstruction of the input, close to it but not equal, and upscaling it to a
//! 4000-pixel photo blurs all of it. Pasting keeps the input's own pixels outside the mask and
//! takes the edit only where the mask is, with a feathered edge so that no seam shows.
//!
//! The blend weight of the edit ("alpha") is made at working size from the latent mask: each
//! latent cell covers `factor` x `factor` pixels; the mask is grown by one cell, because the VAE
//! decoder spreads an edited latent into the pixels around it, then smoothed by a Gaussian of
//! half a cell. Alpha is the mask's own value on the mask (1 for a binary mask), 1/2 one cell
//! outside it, about 1% two cells out and too small to change an 8-bit value three cells out,
//! where the output pixel is the input's, bit for bit. It is resized bilinearly to the output.

use image::RgbImage;

use crate::diffedit::experiments::gaussian_blur;
use crate::error::{Error, Result};
use crate::image_io::resize;

/// The edit's weight at working size (`mask_w * factor` x `mask_h * factor` pixels, row-major)
/// for a latent mask of `mask_h` x `mask_w` values in [0,1] (soft masks are allowed).
pub fn paste_alpha(mask: &[f32], mask_h: usize, mask_w: usize, factor: usize) -> Vec<f32> {
    let (h, w) = (mask_h * factor, mask_w * factor);
    let up: Vec<f32> = (0..h * w).map(|i| mask[(i / w / factor) * mask_w + (i % w) / factor]).collect();
    let grown = max_filter(&up, h, w, factor);
    let soft = gaussian_blur(&grown, h, w, factor as f64 / 2.0);
    // The smoothing would leave a little of the original on the mask's own edge: the mask wins.
    soft.iter().zip(&up).map(|(&s, &m)| s.max(m).clamp(0.0, 1.0)).collect()
}

/// Square maximum filter of radius `r` pixels (each value becomes the largest within `r` along
/// both axes), computed along rows, then columns.
fn max_filter(values: &[f32], h: usize, w: usize, r: usize) -> Vec<f32> {
    let window_max = |len: usize, get: &dyn Fn(usize) -> f32, i: usize| -> f32 {
        (i.saturating_sub(r)..(i + r + 1).min(len)).map(get).fold(f32::MIN, f32::max)
    };
    let mut rows = vec![0f32; h * w];
    for y in 0..h {
        let line = |x: usize| values[y * w + x];
        for x in 0..w {
            rows[y * w + x] = window_max(w, &line, x);
        }
    }
    let mut out = vec![0f32; h * w];
    for x in 0..w {
        let column = |y: usize| rows[y * w + x];
        for y in 0..h {
            out[y * w + x] = window_max(h, &column, y);
        }
    }
    out
}

/// Bilinear sample of an `h` x `w` map at output pixel (x, y) of an `out_w` x `out_h` picture
/// (pixel centres aligned, edges clamped).
fn sample_bilinear(map: &[f32], h: usize, w: usize, out_w: u32, out_h: u32, x: u32, y: u32) -> f32 {
    let coord = |v: u32, out: u32, n: usize| -> (usize, usize, f32) {
        let c = ((v as f64 + 0.5) * n as f64 / out as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let lo = c.floor() as usize;
        (lo, (lo + 1).min(n - 1), (c - lo as f64) as f32)
    };
    let (x0, x1, fx) = coord(x, out_w, w);
    let (y0, y1, fy) = coord(y, out_h, h);
    let top = map[y0 * w + x0] * (1.0 - fx) + map[y0 * w + x1] * fx;
    let bottom = map[y1 * w + x0] * (1.0 - fx) + map[y1 * w + x1] * fx;
    top * (1.0 - fy) + bottom * fy
}

/// `edited` (the decoded picture at working size) pasted into `original` through the latent
/// `mask` (`mask_h` x `mask_w`, values in [0,1]): the result has the original's size; outside the
/// mask's feathered edge it is the original, inside it the edit resized to the original's size.
/// The working size must be the mask's size times a whole factor (the VAE's).
pub fn paste_edit(
    original: &RgbImage,
    edited: &RgbImage,
    mask: &[f32],
    mask_h: usize,
    mask_w: usize,
) -> Result<RgbImage> {
    let (ew, eh) = (edited.width() as usize, edited.height() as usize);
    if mask_h == 0 || mask_w == 0 || mask.len() != mask_h * mask_w {
        return Err(Error::invalid(format!("mask of {} values is not {mask_h}x{mask_w}", mask.len())));
    }
    let factor = ew / mask_w;
    if factor == 0 || ew != mask_w * factor || eh != mask_h * factor {
        return Err(Error::invalid(format!(
            "edited picture {ew}x{eh} is not the mask's {mask_w}x{mask_h} cells times a whole factor"
        )));
    }
    let alpha = paste_alpha(mask, mask_h, mask_w, factor);
    let (ow, oh) = original.dimensions();
    let edit = resize(edited, ow as usize, oh as usize);
    Ok(RgbImage::from_fn(ow, oh, |x, y| {
        let a = sample_bilinear(&alpha, eh, ew, ow, oh, x, y);
        let (o, e) = (original.get_pixel(x, y).0, edit.get_pixel(x, y).0);
        if a <= 0.0 {
            return image::Rgb(o);
        }
        if a >= 1.0 {
            return image::Rgb(e);
        }
        image::Rgb(std::array::from_fn(|c| (a * e[c] as f32 + (1.0 - a) * o[c] as f32).round() as u8))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(w: u32, h: u32, seed: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = x.wrapping_mul(31).wrapping_add(y.wrapping_mul(17)).wrapping_add(seed);
            image::Rgb([(v % 251) as u8, (v * 7 % 253) as u8, (v * 13 % 255) as u8])
        })
    }

    #[test]
    fn empty_mask_keeps_the_original_and_full_mask_takes_the_edit() {
        let original = picture(100, 60, 1);
        let edited = picture(32, 16, 2);
        let (mh, mw) = (4, 8);
        let out = paste_edit(&original, &edited, &vec![0.0; mh * mw], mh, mw).unwrap();
        assert_eq!(out, original);
        let out = paste_edit(&original, &edited, &vec![1.0; mh * mw], mh, mw).unwrap();
        assert_eq!(out, resize(&edited, 100, 60));
    }

    #[test]
    fn alpha_is_one_on_the_mask_half_one_cell_out_and_nothing_three_cells_out() {
        // One masked cell in a 7x7 latent, factor 4: pixels 12..16 on both axes.
        let (n, f) = (7, 4);
        let mut mask = vec![0.0; n * n];
        mask[3 * n + 3] = 1.0;
        let alpha = paste_alpha(&mask, n, n, f);
        let at = |x: usize, y: usize| alpha[y * n * f + x];
        for p in 12..16 {
            assert_eq!(at(p, 13), 1.0, "inside, x {p}");
        }
        // Grown by one cell (4 px): alpha 1/2 at the grown edge, by symmetry of the Gaussian.
        assert!((at(7, 13) + at(8, 13) - 1.0).abs() < 0.05, "{} {}", at(7, 13), at(8, 13));
        // Three cells out and beyond: too small to move an 8-bit value (a * 255 < 1/2).
        assert!(at(0, 13) < 1.0 / 510.0 && at(27, 13) < 1.0 / 510.0, "{} {}", at(0, 13), at(27, 13));
        assert!(alpha.iter().all(|a| (0.0..=1.0).contains(a)));
    }

    #[test]
    fn far_from_the_mask_the_original_pixels_stay_at_full_resolution() {
        // Working size 64x32 (latent 16x8, factor 4), output 640x320: a mask on the left quarter.
        let (mh, mw) = (8, 16);
        let mask: Vec<f32> = (0..mh * mw).map(|i| if i % mw < 4 { 1.0 } else { 0.0 }).collect();
        let original = picture(640, 320, 3);
        let edited = picture(64, 32, 4);
        let out = paste_edit(&original, &edited, &mask, mh, mw).unwrap();
        let big_edit = resize(&edited, 640, 320);
        for y in 0..320 {
            for x in 0..640 {
                // Mask cells end at working x 16 = output x 160; three cells on, working x 28 =
                // output x 280, alpha no longer moves a pixel.
                if x >= 290 {
                    assert_eq!(out.get_pixel(x, y), original.get_pixel(x, y), "({x},{y})");
                }
                if x < 150 {
                    assert_eq!(out.get_pixel(x, y), big_edit.get_pixel(x, y), "({x},{y})");
                }
            }
        }
    }

    #[test]
    fn a_mask_that_does_not_fit_the_picture_is_refused() {
        let original = picture(40, 40, 1);
        let e = paste_edit(&original, &picture(30, 30, 2), &[0.0; 16], 4, 4).unwrap_err();
        assert_eq!(e.to_string(), "edited picture 30x30 is not the mask's 4x4 cells times a whole factor");
        let e = paste_edit(&original, &picture(32, 32, 2), &[0.0; 15], 4, 4).unwrap_err();
        assert_eq!(e.to_string(), "mask of 15 values is not 4x4");
    }
}
