//! Editing pictures from Rust: load a model once into an [`Engine`], then edit. The second
//! target on the same picture reuses the first one's work (the source half of the mask and the
//! inversion), as `diffedit edit --target A --target B` does.
//!
//!     cargo run --release --example edit -- [MODEL_DIR_OR_REPO] [PICTURE]
//!
//! Without arguments it edits the bundled example with the bundled small model.

use std::path::Path;

use candle_core::{DType, Device};
use diffedit::diffedit::engine::{Engine, PictureEdit};
use diffedit::diffedit::Silent;
use diffedit::image_io::{load_rgb, save_image};
use diffedit::models::hub::Fetcher;
use diffedit::models::loading::{ModelSpec, StableDiffusion};

fn main() -> diffedit::Result<()> {
    let mut args = std::env::args().skip(1);
    let model_dir = args.next().unwrap_or_else(|| "models/diffedit-shapes".to_string());
    let picture_path = args.next().unwrap_or_else(|| "docs/example/shapes.png".to_string());

    let spec = ModelSpec { model: Some(model_dir), ..Default::default() };
    let model = StableDiffusion::load(&spec, &Fetcher::from_env(), &Device::Cpu, DType::F32)?;
    // Keep up to 512 MB of stage results (prompt embeddings, latents, mask predictions, inversions).
    let engine = Engine::new(model, 512)?;
    let picture = load_rgb(Path::new(&picture_path))?;

    let source = "a green circle on a gray background";
    for (i, target) in ["a red square on a gray background", "a blue circle on a gray background"].iter().enumerate() {
        // The model's recommended settings (its diffedit.json), then change what you like.
        let params = engine.default_params();
        let edit = PictureEdit::new(source, *target, params);
        let result = engine.edit_picture(&picture, &edit, &Silent)?;
        let out = format!("edited_{}.png", i + 1);
        save_image(&result.picture, Path::new(&out))?;
        save_image(&result.mask_image()?, Path::new(&format!("mask_{}.png", i + 1)))?;
        println!(
            "{target:?}: wrote {out}, mask covers {:.1}%, {} UNet evaluations",
            result.coverage * 100.0,
            result.output.unet_evaluations
        );
    }
    Ok(())
}
