//! Reading pictures as the model wants them and writing results without half-written files.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, GenericImageView, ImageReader, RgbImage};

use crate::error::{Error, Result};

/// Smallest input side we accept: below this there is nothing to edit.
pub const MIN_INPUT_SIDE: u32 = 16;
/// Largest input side we accept (decoding bigger pictures is a memory risk, not an edit).
pub const MAX_INPUT_SIDE: u32 = 16384;

/// Reads a picture and converts it to 8-bit RGB. Grayscale, palette and 16-bit pictures are
/// converted; transparent pixels are composited over white.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb(&bytes, &path.display().to_string())
}

/// What the first bytes of a picture say: its format and size, read without decoding it.
/// `Err(None)` when the format is not one we read; `Err(Some(msg))` when the header is broken.
pub fn probe_bytes(bytes: &[u8]) -> std::result::Result<(image::ImageFormat, u32, u32), Option<String>> {
    let reader =
        ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| Some(e.to_string()))?;
    let format = reader.format().ok_or(None)?;
    let (w, h) = reader.into_dimensions().map_err(|e| Some(format!("cannot read the picture's header: {e}")))?;
    Ok((format, w, h))
}

/// [`load_rgb`] on a picture's bytes (`name` for messages): the same checks and the same
/// conversion, so an uploaded picture gives exactly the pixels of the same file read from disk.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let bad = |msg: String| Error::Image { path: PathBuf::from(name), msg };
    let img = reader(bytes, &bad)?.decode().map_err(|e| bad(format!("cannot decode image: {e}")))?;
    check_sides(&img, &bad)?;
    Ok(to_rgb_over_white(img))
}

/// A reader of a picture's bytes whose format is known (an error naming the formats otherwise).
fn reader<'a>(bytes: &'a [u8], bad: &dyn Fn(String) -> Error) -> Result<ImageReader<std::io::Cursor<&'a [u8]>>> {
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad("not a supported image format (PNG, JPEG, BMP, GIF, TIFF or WebP expected)".into()));
    }
    Ok(reader)
}

fn check_sides(img: &DynamicImage, bad: &dyn Fn(String) -> Error) -> Result<()> {
    let (w, h) = img.dimensions();
    if w < MIN_INPUT_SIDE || h < MIN_INPUT_SIDE {
        return Err(bad(format!("image is {w}x{h}; each side must be at least {MIN_INPUT_SIDE} pixels")));
    }
    if w > MAX_INPUT_SIDE || h > MAX_INPUT_SIDE {
        return Err(bad(format!("image is {w}x{h}; each side must be at most {MAX_INPUT_SIDE} pixels")));
    }
    Ok(())
}

/// A mask picture's bytes as 8-bit grey levels, as [`load_gray`] reads a file.
pub fn decode_gray(bytes: &[u8], name: &str) -> Result<image::GrayImage> {
    let bad = |msg: String| Error::Image { path: PathBuf::from(name), msg };
    let img = reader(bytes, &bad)?.decode().map_err(|e| bad(format!("cannot decode mask picture: {e}")))?;
    to_gray(img, &bad)
}

/// The PNG bytes of a picture, as every PNG this program writes is encoded.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("cannot encode a PNG: {e}")))?;
    Ok(buf)
}

/// Reads a mask picture as 8-bit grey levels (any size, any supported format). Colour is
/// converted to luma; transparent pixels count as black (not to be edited), so a white-on-
/// transparent mask from a painting program reads as drawn.
pub fn load_gray(path: &Path) -> Result<image::GrayImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_gray(&bytes, &path.display().to_string())
}

fn to_gray(img: DynamicImage, bad: &dyn Fn(String) -> Error) -> Result<image::GrayImage> {
    let (w, h) = img.dimensions();
    if w > MAX_INPUT_SIDE || h > MAX_INPUT_SIDE {
        return Err(bad(format!("mask picture is {w}x{h}; each side must be at most {MAX_INPUT_SIDE} pixels")));
    }
    if !img.color().has_alpha() {
        return Ok(img.to_luma8());
    }
    let la = img.to_luma_alpha8();
    Ok(image::GrayImage::from_fn(w, h, |x, y| {
        let p = la.get_pixel(x, y).0;
        image::Luma([((p[0] as u32 * p[1] as u32 + 127) / 255) as u8])
    }))
}

fn to_rgb_over_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba32f();
    let (w, h) = rgba.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = p[3].clamp(0.0, 1.0);
        let c = |v: f32| ((v * a + (1.0 - a)) * 255.0).round().clamp(0.0, 255.0) as u8;
        image::Rgb([c(p[0]), c(p[1]), c(p[2])])
    })
}

/// The size a picture is processed at: the long side at `native` pixels, the aspect ratio kept,
/// both sides rounded to multiples of `multiple` (at least one multiple).
pub fn processing_size(width: u32, height: u32, native: usize, multiple: usize) -> (usize, usize) {
    let long = width.max(height) as f64;
    let scale = native as f64 / long;
    let round = |v: f64| (((v * scale) / multiple as f64).round() as usize).max(1) * multiple;
    (round(width as f64), round(height as f64))
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> Result<(usize, usize)> {
    let err = || Error::invalid(format!("--size must look like 512x384 (width x height), got `{s}`"));
    let lower = s.to_ascii_lowercase();
    let (w, h) = lower.split_once('x').ok_or_else(err)?;
    let w: usize = w.trim().parse().map_err(|_| err())?;
    let h: usize = h.trim().parse().map_err(|_| err())?;
    if w == 0 || h == 0 {
        return Err(err());
    }
    Ok((w, h))
}

/// Checks a processing size against the model: sides multiples of the VAE factor, at least one
/// UNet cell, and at most 4x the native side.
pub fn check_processing_size(
    width: usize,
    height: usize,
    vae_factor: usize,
    unet_factor: usize,
    native: usize,
) -> Result<()> {
    if !width.is_multiple_of(vae_factor) || !height.is_multiple_of(vae_factor) {
        return Err(Error::invalid(format!(
            "size {width}x{height}: both sides must be multiples of {vae_factor} (the VAE's downscale factor)"
        )));
    }
    let min = vae_factor * unet_factor;
    if width < min || height < min {
        return Err(Error::invalid(format!(
            "size {width}x{height} is too small for this model: each side must be at least {min} pixels"
        )));
    }
    let max = native * 4;
    if width > max || height > max {
        return Err(Error::invalid(format!(
            "size {width}x{height} is too large for this model: each side must be at most {max} pixels (4x its native {native})"
        )));
    }
    Ok(())
}

/// Resizes with a bicubic filter (Pillow's default for `resize`); returns the input unchanged
/// when it already has the size.
pub fn resize(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    if img.width() as usize == width && img.height() as usize == height {
        return img.clone();
    }
    image::imageops::resize(img, width as u32, height as u32, image::imageops::FilterType::CatmullRom)
}

/// `u8 / 255 * 2 - 1` as [1,3,H,W] f32, computed as the reference does (in f32).
pub fn image_to_tensor(img: &RgbImage) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            data[c * h * w + y as usize * w + x as usize] = p.0[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu)?)
}

/// A decoder output [1,3,H,W] nominally in [-1,1] as an 8-bit picture:
/// round(clamp(x/2+0.5, 0, 1) * 255).
pub fn tensor_to_image(t: &Tensor) -> Result<RgbImage> {
    let (_, c, h, w) = t.dims4()?;
    if c != 3 {
        return Err(Error::invalid(format!("expected 3 channels, got {c}")));
    }
    let v = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let px = |ch: usize| {
            let val = v[ch * h * w + y as usize * w + x as usize];
            ((val / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8
        };
        image::Rgb([px(0), px(1), px(2)])
    }))
}

/// A [1,1,h,w] map in [0,1] as f32 values, row-major.
pub fn map_values(t: &Tensor) -> Result<(usize, usize, Vec<f32>)> {
    let (h, w) = (t.dim(t.rank() - 2)?, t.dim(t.rank() - 1)?);
    let v = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((h, w, v))
}

/// Fails early, before any computation, when an output's folder does not exist.
pub fn check_output_path(path: &Path, flag: &str) -> Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::invalid(format!(
            "{flag} {}: the directory {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    if path.is_dir() {
        return Err(Error::invalid(format!("{flag} {}: is a directory, a file name is needed", path.display())));
    }
    Ok(())
}

/// Writes through a temporary file in the same folder, renamed into place when complete, so a
/// failure never leaves a partial file.
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("tmp");
    let suffix = format!(".{ext}");
    let mut builder = tempfile::Builder::new();
    builder.prefix(".diffedit-").suffix(&suffix);
    // A finished output is an ordinary file (0666 less the umask, applied by open(2)), not the
    // temp file's default 0600.
    #[cfg(unix)]
    builder.permissions(<std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666));
    let tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    write(tmp.path())?;
    // On disk before it takes the name: after a power loss the name holds the old file or the
    // whole new one, never a torn one.
    std::fs::File::open(tmp.path()).and_then(|f| f.sync_all()).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        // The rename itself, recorded in the folder (best effort: some filesystems refuse it).
        let _ = d.sync_all();
    }
    Ok(())
}

/// Saves a picture atomically; the format follows the extension (PNG when there is none).
pub fn save_image(img: &RgbImage, path: &Path) -> Result<()> {
    let format = image::ImageFormat::from_path(path).unwrap_or(image::ImageFormat::Png);
    if format == image::ImageFormat::Png {
        let bytes = encode_png(img)?;
        return write_atomic(path, |tmp| std::fs::write(tmp, &bytes).map_err(|e| Error::io(tmp, e)));
    }
    write_atomic(path, |tmp| {
        img.save_with_format(tmp, format)
            .map_err(|e| Error::Image { path: PathBuf::from(path), msg: format!("cannot write: {e}") })
    })
}
