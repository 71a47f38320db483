//! Upper bounds for edit success on the synthetic edits: how often the classifier reads the
//! target (a) in the VAE's reconstruction of the target scene (the autoencoder's ceiling) and
//! (b) in DiffEdit's result when decoding uses the ground-truth region as its mask (the drawing's
//! ceiling with a perfect mask). Compare with `diffedit eval` to see what limits success.
//!
//!     cargo run --release --example ceilings -- MODEL_DIR [N_EDITS] [validation]
use candle_core::{DType, Device, Tensor};
use diffedit::diffedit::engine::Engine;
use diffedit::diffedit::pipeline::{EditRequest, MaskChoice};
use diffedit::diffedit::{DiffEdit, Noise, Silent};
use diffedit::eval::psnr_where;
use diffedit::image_io::{image_to_tensor, tensor_to_image};
use diffedit::models::hub::Fetcher;
use diffedit::models::loading::{ModelSpec, StableDiffusion};
use diffedit::synth::{self, Edit};
use rayon::prelude::*;

fn read(edit: &Edit, image: &image::RgbImage) -> (bool, String) {
    let size = edit.source.size;
    let r = synth::classify(image.as_raw(), &edit.target.render_background(), &edit.region(), size);
    let ok = synth::is_success(&r, edit.target_object());
    let what = format!(
        "{}/{}/{:.2}",
        r.colour.map(|c| synth::OBJECT_COLOURS[c].name).unwrap_or("-"),
        r.shape.map(|s| s.name()).unwrap_or("-"),
        r.fit
    );
    (ok, what)
}

fn main() -> diffedit::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: ceilings MODEL_DIR [N] [validation]");
    let n: usize = args.get(2).map(|v| v.parse().expect("N")).unwrap_or(200);
    let validation = args.get(3).is_some_and(|v| v == "validation");
    let spec = ModelSpec { model: Some(dir.clone()), ..Default::default() };
    let model = StableDiffusion::load(&spec, &Fetcher::from_env().with_offline(true), &Device::Cpu, DType::F32)?;
    // A cache of 0 MB: the engine only supplies the model's recommended settings here.
    let engine = Engine::new(model, 0)?;
    let (model, params) = (engine.model(), engine.default_params());
    let size = model.native_size();
    let edits = if validation { synth::validation_edits(n, size) } else { synth::heldout_edits(n, size) };
    let pipeline = DiffEdit::new(model, params.clone())?;
    let latent = pipeline.latent_shape(size, size);
    let rows: Vec<String> = edits
        .par_iter()
        .map(|edit| -> diffedit::Result<String> {
            let source = image::RgbImage::from_raw(size as u32, size as u32, edit.source.render()).unwrap();
            let target = image::RgbImage::from_raw(size as u32, size as u32, edit.target.render()).unwrap();
            let zero = Tensor::zeros((1, latent.0, latent.1, latent.2), DType::F32, &Device::Cpu)?;
            let z = pipeline.encode_image(&image_to_tensor(&target)?, &zero)?;
            let recon = tensor_to_image(&pipeline.decode_latents(&z)?)?;
            let (vae_ok, vae_read) = read(edit, &recon);
            // The ground-truth region on the latent grid: a cell is in when any of its pixels is.
            let gt = edit.region();
            let f = size / latent.1;
            let cells: Vec<f32> = (0..latent.1 * latent.2)
                .map(|c| {
                    let (cy, cx) = (c / latent.2, c % latent.2);
                    let any = (0..f * f).any(|k| gt[(cy * f + k / f) * size + cx * f + k % f]);
                    any as u8 as f32
                })
                .collect();
            let oracle = Tensor::from_vec(cells, (1, 1, latent.1, latent.2), &Device::Cpu)?;
            let noise = Noise::seeded(params.seed.wrapping_add(edit.index), latent, params.mask_samples)?;
            let (image, source_caption, target_caption) =
                (image_to_tensor(&source)?, edit.source_caption(), edit.target_caption());
            let request = EditRequest {
                mask: MaskChoice::Given(oracle),
                ..EditRequest::new(&image, &source_caption, &target_caption, &noise)
            };
            let out = pipeline.run(&request, &Silent)?;
            let result = tensor_to_image(&out.decoded)?;
            let (oracle_ok, oracle_read) = read(edit, &result);
            let outside: Vec<bool> = gt.iter().map(|b| !b).collect();
            let bg = psnr_where(&result, &source, &outside);
            Ok(format!(
                "{{\"index\":{},\"kind\":\"{}\",\"target\":\"{}/{}\",\"vae\":{},\"vae_read\":\"{}\",\"oracle\":{},\"oracle_read\":\"{}\",\"oracle_bg\":{:.2}}}",
                edit.index,
                edit.kind.name(),
                synth::OBJECT_COLOURS[edit.target_object().colour].name,
                edit.target_object().shape.name(),
                vae_ok,
                vae_read,
                oracle_ok,
                oracle_read,
                bg
            ))
        })
        .collect::<diffedit::Result<_>>()?;
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
