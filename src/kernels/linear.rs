//! Linear layers `y = x W^T + b` on the GEMM with the weight packed once: M = tokens (the
//! activations, packed per call), N = output features (contiguous in y), K = input features.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::amx::{gemm_bf16, BSrc16, PackedA16, PackedB16};
use super::avx512bf16::{gemm_pairs, BPairs, PackedAPairs, PackedBPairs};
use super::gemm::{gemm_rows, PackedB};
use super::{Bf16Isa, Products};

/// The packed weights, in the precision and layout of the unit the products run on.
enum Weights {
    F32(PackedB),
    Amx(PackedB16),
    Avx512Bf16(PackedBPairs),
}

pub struct PackedLinear {
    b: Weights,
    pub d_in: usize,
    pub d_out: usize,
}

impl PackedLinear {
    /// `weight`: f32 `[d_out, d_in]`; bf16 `products` need their unit ([`Bf16Isa::supported`]).
    pub fn new(weight: &Tensor, products: Products) -> Result<Self> {
        let (d_out, d_in) = weight.dims2()?;
        let w = weight.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        // B[k][n] = W[n][k]
        let b = match products {
            Products::F32 => Weights::F32(PackedB::new(&w, d_in, d_out, 1, d_in)),
            Products::Bf16(isa) if !isa.supported() => {
                candle_core::bail!("linear kernel: bf16 products on {} need a CPU with it", isa.name())
            }
            Products::Bf16(Bf16Isa::Amx) => Weights::Amx(PackedB16::new(&w, d_in, d_out, 1, d_in)),
            Products::Bf16(Bf16Isa::Avx512Bf16) => Weights::Avx512Bf16(PackedBPairs::new(&w, d_in, d_out, 1, d_in)),
        };
        Ok(Self { b, d_in, d_out })
    }

    fn run(&self, x: (&CpuStorage, &Layout), bias: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let xs = match (x.0, x.1.contiguous_offsets()) {
            (CpuStorage::F32(d), Some((a, b))) => &d[a..b],
            _ => candle_core::bail!("linear kernel: contiguous f32 input expected"),
        };
        let dims = x.1.shape().dims();
        let d_in = *dims.last().unwrap_or(&0);
        if d_in != self.d_in {
            candle_core::bail!("linear kernel: input {:?}, weight expects {} features", x.1.shape(), self.d_in);
        }
        let m = xs.len() / d_in.max(1);
        // The output starts as the bias rows (written once), or zeros.
        let out = match bias {
            Some((bs, bl)) => {
                let bv = match (bs, bl.contiguous_offsets()) {
                    (CpuStorage::F32(d), Some((a, b))) if b - a == self.d_out => &d[a..b],
                    _ => candle_core::bail!("linear kernel: bias must be contiguous f32 [{}]", self.d_out),
                };
                let mut out = Vec::with_capacity(m * self.d_out);
                for _ in 0..m {
                    out.extend_from_slice(bv);
                }
                out
            }
            None => vec![0f32; m * self.d_out],
        };
        let mut out = out;
        match &self.b {
            Weights::F32(b) => gemm_rows(xs, m, d_in, d_in, b, &mut out),
            Weights::Amx(b) => {
                let a = PackedA16::new(xs, m, d_in, d_in, 1);
                gemm_bf16(&a, BSrc16::Packed(b), 1, self.d_out, &mut out, bias.is_some())
            }
            Weights::Avx512Bf16(b) => {
                let a = PackedAPairs::new(xs, m, d_in, d_in, 1);
                gemm_pairs(&a, BPairs::Packed(b), 1, self.d_out, &mut out, bias.is_some())
            }
        }
        let mut odims = dims.to_vec();
        *odims.last_mut().unwrap() = self.d_out;
        Ok((CpuStorage::F32(out), Shape::from(odims)))
    }
}

struct LinearOp<'a>(&'a PackedLinear);

impl CustomOp1 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "diffedit-linear"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.run((s1, l1), None)
    }
}

impl CustomOp2 for LinearOp<'_> {
    fn name(&self) -> &'static str {
        "diffedit-linear-bias"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.run((s1, l1), Some((s2, l2)))
    }
}

pub fn linear_packed(x: &Tensor, w: &PackedLinear, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match bias {
        Some(b) => x.apply_op2_no_bwd(&b.contiguous()?, &LinearOp(w)),
        None => x.apply_op1_no_bwd(&LinearOp(w)),
    }
}
