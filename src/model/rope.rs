//! Rotary position embeddings: plain, or YaRN as gpt-oss was trained with it.

use super::config::RopeScaling;
use super::Result;
use crate::mlx::fast::{self, RopeFrequencies};
use crate::mlx::{Array, Dtype};

pub(crate) enum Rope {
    Plain {
        dims: i32,
        base: f32,
    },
    Yarn {
        dims: i32,
        mscale: f64,
        wavelengths: Array,
    },
}

impl Rope {
    pub(crate) fn new(dims: i32, base: f64, scaling: Option<&RopeScaling>) -> Result<Rope> {
        let Some(s) = scaling else {
            return Ok(Rope::Plain {
                dims,
                base: base as f32,
            });
        };
        // The rotary pairs whose wavelength falls between these dimensions are
        // interpolated between extrapolated and scaled frequencies.
        // Scalars in f64 like mlx-lm's Python floats, rounded to f32 where
        // they meet arrays.
        let correction_dim = |rotations: f64| {
            f64::from(dims)
                * (s.original_max_position_embeddings / (rotations * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let (mut low, mut high) = (correction_dim(s.beta_fast), correction_dim(s.beta_slow));
        // transformers rounds the range unless `truncate: false`; mlx-lm 0.32
        // always rounds, which moves pairs 9-17 of gpt-oss's rotation.
        if s.truncate.unwrap_or(true) {
            (low, high) = (low.floor(), high.ceil());
        }
        let (low, mut high) = (low.max(0.0), high.min(f64::from(dims - 1)));
        if low == high {
            high += 0.001; // the ramp below would divide by zero
        }
        let mscale = yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim);

        // Same ops and float32 precision as mlx-lm's YarnRoPE.
        let f32_scalar = |v: f64| Array::scalar(v, Dtype::Float32);
        let exponents = Array::arange(0.0, f64::from(dims), 2.0, Dtype::Float32)?
            .divide(&f32_scalar(f64::from(dims))?)?;
        let freq_extra = f32_scalar(base)?.power(&exponents)?;
        let freq_inter = f32_scalar(s.factor)?.multiply(&freq_extra)?;
        let ramp = Array::arange(0.0, f64::from(dims / 2), 1.0, Dtype::Float32)?
            .subtract(&f32_scalar(low)?)?
            .divide(&f32_scalar(high - low)?)?
            .clip(Some(&f32_scalar(0.0)?), Some(&f32_scalar(1.0)?))?;
        let freq_mask = f32_scalar(1.0)?.subtract(&ramp)?;
        let blended = freq_inter
            .multiply(&freq_mask)?
            .add(&freq_extra.multiply(&f32_scalar(1.0)?.subtract(&freq_mask)?)?)?;
        let wavelengths = freq_inter.multiply(&freq_extra)?.divide(&blended)?;
        wavelengths.eval()?;
        Ok(Rope::Yarn {
            dims,
            mscale,
            wavelengths,
        })
    }

    /// Rotates `x [batch, heads, seq, head_dim]` for positions `offset..`.
    pub(crate) fn forward(&self, x: &Array, offset: i32) -> Result<Array> {
        Ok(match self {
            Rope::Plain { dims, base } => {
                fast::rope(x, *dims, false, RopeFrequencies::Base(*base), 1.0, offset)?
            }
            Rope::Yarn {
                dims,
                mscale,
                wavelengths,
            } => {
                // gpt-oss rotates the whole head, so the attention scale
                // correction applies to every feature.
                let x = if *mscale != 1.0 {
                    x.multiply(&x.scalar_like(*mscale)?)?
                } else {
                    x.clone()
                };
                fast::rope(
                    &x,
                    *dims,
                    false,
                    RopeFrequencies::Explicit(wavelengths),
                    1.0,
                    offset,
                )?
            }
        })
    }
}

fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}
