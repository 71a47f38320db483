//! Runs a command on an Intel Xeon with AMX as if the CPU had no tile units: the process (and its
//! children) may not ask Linux for AMX's tile-data state
//! ([`diffedit::kernels::amx::refuse_tile_state`]), so every library that asks before it uses the
//! tiles falls back to what a CPU without AMX runs: AVX512-BF16 on such a Xeon, as on an AMD Zen 4.
//! Our own run-time choice does the same (`diffedit ... --json` reports `"isa": "avx512bf16"`).
//!
//!   cargo build --release --example no_amx
//!   target/release/examples/no_amx PYTHON tools/bench_torch.py unet --dtype bf16
//!
//! Why not `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16` alone: it caps oneDNN's primitives
//! (convolutions, matmuls), but PyTorch's own flash attention packs its bf16 products for the
//! tile units whenever the process may use them. Measured on the Xeon (1 thread, 8 heads x 4096 x
//! 40): 115 ms under that cap, 302 ms under this wrapper, which is the AVX512-BF16 figure (ours:
//! 306 ms). A library that used AMX without asking would die with SIGILL here, not run slowly.

use std::os::unix::process::CommandExt;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: no_amx COMMAND [ARGS...]");
        std::process::exit(2);
    };
    if let Err(e) = diffedit::kernels::amx::refuse_tile_state() {
        eprintln!("no_amx: could not install the seccomp filter: {e}");
        std::process::exit(1);
    }
    let e = std::process::Command::new(program).args(rest).exec();
    eprintln!("no_amx: could not run {program}: {e}");
    std::process::exit(127);
}
