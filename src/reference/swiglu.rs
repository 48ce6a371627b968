//! SwiGLU: `y = silu(g) u` with `silu(g) = g sigmoid(g)`.
//! Backward: `du = dy silu(g)`, `dg = dy u sigmoid(g) (1 + g (1 - sigmoid(g)))`.

/// gate, up: [n] -> y [n].
pub fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter()
        .zip(up)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

/// gate, up, dy: [n] -> (dgate, dup).
pub fn swiglu_backward(gate: &[f64], up: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut dg = Vec::with_capacity(gate.len());
    let mut du = Vec::with_capacity(gate.len());
    for ((g, u), d) in gate.iter().zip(up).zip(dy) {
        let s = 1.0 / (1.0 + (-g).exp());
        dg.push(d * u * s * (1.0 + g * (1.0 - s)));
        du.push(d * g * s);
    }
    (dg, du)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testing::{close, dot, numeric_grad, random_values};

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let g = random_values(17, 21, 4.0);
        let u = random_values(17, 22, 2.0);
        let dy = random_values(17, 23, 1.0);
        let (dg, du) = swiglu_backward(&g, &u, &dy);
        close(
            &dg,
            &numeric_grad(&g, |g| dot(&swiglu(g, &u), &dy)),
            1e-7,
            "dg",
        );
        close(
            &du,
            &numeric_grad(&u, |u| dot(&swiglu(&g, u), &dy)),
            1e-7,
            "du",
        );
        // silu(g) = g sigmoid(g) at one point by hand: silu(1) = 1 / (1 + e^-1).
        assert!((swiglu(&[1.0], &[2.0])[0] - 2.0 / (1.0 + (-1f64).exp())).abs() < 1e-15);
    }
}
