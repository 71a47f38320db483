//! Uploaded pictures: checked before they are decoded (format, pixel count), decoded exactly as
//! `diffedit edit` reads a file, and prepared at the model's processing size once.

use axum::http::StatusCode;

use super::ApiError;
use crate::diffedit::engine::{Engine, PreparedPicture};
use crate::image_io::{decode_gray, decode_rgb, probe_bytes};

pub struct Upload {
    /// The name the page gave (`?name=`), for the command line it shows.
    pub name: String,
    /// The bytes as sent (a painted mask is read from them as grey levels).
    pub bytes: Vec<u8>,
    pub prepared: PreparedPicture,
}

impl Upload {
    pub fn width(&self) -> u32 {
        self.prepared.original.width()
    }
    pub fn height(&self) -> u32 {
        self.prepared.original.height()
    }
    /// Memory the upload holds: its bytes and two decoded copies.
    pub fn footprint(&self) -> usize {
        let p = &self.prepared;
        self.bytes.len() + p.original.as_raw().len() + p.processed.as_raw().len() + p.tensor.elem_count() * 4
    }

    /// The upload read as a mask picture (grey levels; transparent counts as black).
    pub fn as_mask(&self) -> Result<image::GrayImage, ApiError> {
        decode_gray(&self.bytes, &self.name).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
    }
}

/// Checks and decodes an upload. 415: not a picture format we read; 422: too many pixels (found
/// from the header, before decoding), broken, or a size the model cannot process.
pub fn accept(engine: &Engine, bytes: Vec<u8>, name: String, max_pixels: u64) -> Result<Upload, ApiError> {
    let (_, w, h) = probe_bytes(&bytes).map_err(|e| match e {
        None => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not a supported image format (PNG, JPEG, BMP, GIF, TIFF or WebP expected)",
        ),
        Some(msg) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{name}: {msg}")),
    })?;
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{name}: the picture is {w}x{h} ({pixels} pixels); this server takes at most {max_pixels} pixels \
                 (--max-megapixels)"
            ),
        ));
    }
    let unprocessable = |e: crate::Error| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    let picture = decode_rgb(&bytes, &name).map_err(unprocessable)?;
    let prepared = engine.prepare_picture(picture, None).map_err(unprocessable)?;
    Ok(Upload { name, bytes, prepared })
}

/// A file name safe to show in a shell command: the last path component, only letters, digits,
/// `.`, `_`, `-` (others become `_`), `picture.png` when nothing is left.
pub fn clean_name(name: Option<&str>) -> String {
    let base = name.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .take(100)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']).to_string();
    if cleaned.is_empty() {
        "picture.png".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_for_the_command_line() {
        assert_eq!(clean_name(Some("shapes.png")), "shapes.png");
        assert_eq!(clean_name(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_name(Some("my photo $(rm).jpg")), "my_photo___rm_.jpg");
        assert_eq!(clean_name(Some("-rf")), "rf");
        assert_eq!(clean_name(None), "picture.png");
    }
}
