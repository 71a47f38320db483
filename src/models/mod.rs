//! Stable Diffusion components, each built from its own `config.json`.

pub mod attention;
pub mod clip;
pub mod config;
pub mod hub;
pub mod loading;
pub mod resnet;
pub mod single_file;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod weights;
