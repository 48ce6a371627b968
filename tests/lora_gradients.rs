//! Finite-difference checks in f64 on the CPU: the gradients autograd gives for the LoRA linear
//! (dA, dB, dx) and for the LoRA parameters of the tiny 2-layer LLaMA end to end, against central
//! differences (eps 1e-6; agreement to 1e-6 relative + 1e-8 absolute).

mod lora_support;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use wick::formats::Weight;
use wick::models::linear::{Linear, LoraWeights};

const EPS: f64 = 1e-6;

fn randn(rng: &mut rand::rngs::StdRng, shape: &[usize], scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| rng.random_range(-1.0..1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Central difference of `f` along element `i` of `var`.
fn numeric(var: &Var, i: usize, f: &dyn Fn() -> f64) -> f64 {
    let original = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let shape = var.shape().clone();
    let set = |delta: f64| {
        let mut v = original.clone();
        v[i] += delta;
        var.set(&Tensor::from_vec(v, &shape, &Device::Cpu).unwrap())
            .unwrap();
    };
    set(EPS);
    let plus = f();
    set(-EPS);
    let minus = f();
    set(0.0);
    (plus - minus) / (2.0 * EPS)
}

fn assert_close(what: &str, analytic: f64, numeric: f64) {
    let tol = 1e-6 * numeric.abs().max(analytic.abs()) + 1e-8;
    assert!(
        (analytic - numeric).abs() <= tol,
        "{what}: autograd {analytic} vs finite difference {numeric}"
    );
}

#[test]
fn lora_linear_gradients_match_finite_differences() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let (tokens, inp, out, r) = (3, 5, 4, 2);
    let w = randn(&mut rng, &[out, inp], 0.5);
    let bias = randn(&mut rng, &[out], 0.1);
    let x = Var::from_tensor(&randn(&mut rng, &[tokens, inp], 1.0)).unwrap();
    let a = Var::from_tensor(&randn(&mut rng, &[r, inp], 0.5)).unwrap();
    let b = Var::from_tensor(&randn(&mut rng, &[out, r], 0.5)).unwrap();
    let probe = randn(&mut rng, &[tokens, out], 1.0);
    let mut linear = Linear::new(Weight::Dense(w), Some(bias)).unwrap();
    linear.lora = Some(LoraWeights {
        dora: None,
        a: a.as_tensor().clone(),
        b: b.as_tensor().clone(),
        scale: 1.5,
        dropout: 0.0,
        dropout_masks: None,
    });
    // A loss that weighs every output differently: sum(y * probe) + sum(y^2)/2.
    let loss = || -> Tensor {
        let y = linear.forward_t(x.as_tensor(), true).unwrap();
        ((&y * &probe).unwrap().sum_all().unwrap()
            + (y.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap())
        .unwrap()
    };
    let grads = loss().backward().unwrap();
    for (name, var) in [("x", &x), ("A", &a), ("B", &b)] {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (i, analytic) in g.iter().enumerate() {
            let num = numeric(var, i, &|| scalar(&loss()));
            assert_close(&format!("d{name}[{i}]"), *analytic, num);
        }
    }
}

/// Mean next-token negative log-likelihood in f64 (the trainer's loss, without the f32 cast, so the
/// finite differences are exact enough).
fn nll_f64(logits: &Tensor, ids: &[u32], batch: usize, seq: usize) -> Tensor {
    let vocab = logits.dim(D::Minus1).unwrap();
    let lp = candle_nn::ops::log_softmax(
        &logits
            .narrow(1, 0, seq - 1)
            .unwrap()
            .reshape((batch * (seq - 1), vocab))
            .unwrap(),
        D::Minus1,
    )
    .unwrap();
    let targets: Vec<u32> = (0..batch)
        .flat_map(|b| ids[b * seq + 1..(b + 1) * seq].to_vec())
        .collect();
    let targets = Tensor::from_vec(targets, (batch * (seq - 1), 1), &Device::Cpu).unwrap();
    (lp.gather(&targets, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap()
        / (batch * (seq - 1)) as f64)
        .unwrap()
}

#[test]
fn tiny_model_lora_gradients_match_finite_differences() {
    let mut model = lora_support::tiny_model(DType::F64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    // An adapter on every projection, both A and B non-zero, in f64.
    let mut vars = Vec::new();
    for (path, linear) in model.model.linear_layers_mut() {
        let r = 2;
        let a = Var::from_tensor(&randn(&mut rng, &[r, linear.in_features()], 0.3)).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, &[linear.out_features(), r], 0.3)).unwrap();
        linear.lora = Some(LoraWeights {
            dora: None,
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 2.0,
            dropout: 0.0,
            dropout_masks: None,
        });
        vars.push((format!("{path}.lora_A"), a));
        vars.push((format!("{path}.lora_B"), b));
    }
    let (batch, seq) = (2, 6);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(5..100)).collect();
    let input = Tensor::from_vec(ids.clone(), (batch, seq), &Device::Cpu).unwrap();
    let loss = || {
        nll_f64(
            &model.model.forward_train(&input).unwrap(),
            &ids,
            batch,
            seq,
        )
    };
    let grads = loss().backward().unwrap();
    // Every parameter tensor of both layers, three coordinates each.
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for _ in 0..3 {
            let i = rng.random_range(0..g.len());
            let num = numeric(var, i, &|| scalar(&loss()));
            assert_close(&format!("{name}[{i}]"), g[i], num);
        }
    }
}

/// Activation checkpointing (each layer recomputed in the backward pass, adapter gradients handed
/// over through a sink) gives the gradients of the plain graph, which the test above checks against
/// finite differences: f64, agreement to 1e-10 relative.
#[test]
fn checkpointed_forward_gives_the_plain_gradients() {
    let mut model = lora_support::tiny_model(DType::F64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let mut vars = Vec::new();
    for (path, linear) in model.model.linear_layers_mut() {
        let a = Var::from_tensor(&randn(&mut rng, &[3, linear.in_features()], 0.3)).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, &[linear.out_features(), 3], 0.3)).unwrap();
        linear.lora = Some(LoraWeights {
            dora: None,
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 1.5,
            dropout: 0.0,
            dropout_masks: None,
        });
        vars.push((path, a, b));
    }
    let (batch, seq) = (3, 7);
    let ids: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(5..100)).collect();
    let input = Tensor::from_vec(ids.clone(), (batch, seq), &Device::Cpu).unwrap();
    let plain_loss = nll_f64(
        &model.model.forward_train(&input).unwrap(),
        &ids,
        batch,
        seq,
    );
    let plain = plain_loss.backward().unwrap();
    let sink = wick::ops::checkpoint::GradSink::new();
    let ckpt_loss = nll_f64(
        &model
            .model
            .forward_train_checkpointed(&input, &sink, usize::MAX)
            .unwrap(),
        &ids,
        batch,
        seq,
    );
    let ckpt = ckpt_loss.backward().unwrap();
    let sunk = sink.take();
    assert!((scalar(&plain_loss) - scalar(&ckpt_loss)).abs() < 1e-12);
    for (path, a, b) in &vars {
        for (what, var) in [("lora_A", a), ("lora_B", b)] {
            assert!(
                ckpt.get(var.as_tensor()).is_none(),
                "{path}.{what} in the store"
            );
            let want = plain.get(var.as_tensor()).unwrap().flatten_all().unwrap();
            let got = sunk[&var.as_tensor().id()].flatten_all().unwrap();
            let (want, got) = (
                want.to_vec1::<f64>().unwrap(),
                got.to_vec1::<f64>().unwrap(),
            );
            for (w, g) in want.iter().zip(&got) {
                assert!(
                    (w - g).abs() <= 1e-10 * w.abs().max(1e-3),
                    "{path}.{what}: {g} vs {w}"
                );
            }
        }
    }
}
