//! ONNX graphs built here with the generated protobuf types: the importer's rules (layer
//! names, Gemm's alpha/beta/transB, MatMul + Add and Conv + Add bias folding, Reshape,
//! Identity, Dropout, Constant) checked against tract on the same bytes, and every unsupported
//! operator, shape or pattern and every corrupt file rejected with a clear error, never a
//! panic (also under random mutations of a real export).

use proptest::prelude::*;
use prost::Message;
use relushare_model::{count, presets, reference, ActKind, Layer};
use relushare_onnx::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use relushare_onnx::{import_bytes, ImportOptions, OnnxError};

fn tensor(name: &str, dims: &[i64], data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: data,
        ..Default::default()
    }
}

fn ints_tensor(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![v.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

/// Deterministic values in [-1, 1).
fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let x = i
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503))
                >> 8;
            (x % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

enum A {
    I(i64),
    F(f32),
    Ints(Vec<i64>),
    S(&'static str),
    T(TensorProto),
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<(&str, A)>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs
            .into_iter()
            .map(|(n, a)| {
                let mut p = AttributeProto {
                    name: Some(n.into()),
                    ..Default::default()
                };
                match a {
                    A::I(i) => {
                        p.i = Some(i);
                        p.r#type = Some(AttributeType::Int as i32);
                    }
                    A::F(f) => {
                        p.f = Some(f);
                        p.r#type = Some(AttributeType::Float as i32);
                    }
                    A::Ints(v) => {
                        p.ints = v;
                        p.r#type = Some(AttributeType::Ints as i32);
                    }
                    A::S(s) => {
                        p.s = Some(s.as_bytes().to_vec());
                        p.r#type = Some(AttributeType::String as i32);
                    }
                    A::T(t) => {
                        p.t = Some(t);
                        p.r#type = Some(AttributeType::Tensor as i32);
                    }
                }
                p
            })
            .collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Some(v) => dimension::Value::DimValue(*v),
                                None => dimension::Value::DimParam("batch".into()),
                            }),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct G {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    input: Vec<Option<i64>>,
    outputs: Vec<&'static str>,
    opset: i64,
}

impl G {
    fn bytes(&self) -> Vec<u8> {
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("relushare-test".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: self.nodes.clone(),
                initializer: self.inits.clone(),
                input: vec![value_info("x", &self.input)],
                output: self
                    .outputs
                    .iter()
                    .map(|o| value_info(o, &[None, Some(4)]))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// A network exercising every folding rule: input [batch, 2, 6, 6].
/// stem: Conv 2->3 k3 p1 without bias, + constant [1, 3, 1, 1] (folds) -> Relu "gate" ->
/// MaxPool 2 -> Identity -> Flatten -> MatMul [27, 5] + [5] (folds) -> unnamed Relu ->
/// Dropout (opset-12 ratio input) -> Reshape to [-1, 5] (a no-op) -> Gemm transB 0,
/// alpha 0.5, beta 2, C [1, 4] -> logits.
fn rich() -> G {
    G {
        nodes: vec![
            node(
                "Conv",
                "stem",
                &["x", "w1"],
                &["c1"],
                vec![
                    ("kernel_shape", A::Ints(vec![3, 3])),
                    ("pads", A::Ints(vec![1, 1, 1, 1])),
                    ("strides", A::Ints(vec![1, 1])),
                ],
            ),
            node("Add", "", &["cb", "c1"], &["c1b"], vec![]),
            node("Relu", "gate", &["c1b"], &["r1"], vec![]),
            node(
                "MaxPool",
                "/pool/MaxPool",
                &["r1"],
                &["p1"],
                vec![
                    ("kernel_shape", A::Ints(vec![2, 2])),
                    ("strides", A::Ints(vec![2, 2])),
                ],
            ),
            node("Identity", "", &["p1"], &["p1i"], vec![]),
            node("Flatten", "", &["p1i"], &["f"], vec![("axis", A::I(1))]),
            node("MatMul", "", &["f", "w2"], &["m"], vec![]),
            node("Add", "", &["m", "b2"], &["mb"], vec![]),
            node("Relu", "", &["mb"], &["r2"], vec![]),
            node(
                "Constant",
                "",
                &[],
                &["ratio"],
                vec![("value", A::T(tensor("", &[], vec![0.3])))],
            ),
            node("Dropout", "", &["r2", "ratio"], &["d"], vec![]),
            node("Reshape", "", &["d", "shape"], &["d2"], vec![]),
            node(
                "Gemm",
                "head",
                &["d2", "w3", "c3"],
                &["logits"],
                vec![
                    ("alpha", A::F(0.5)),
                    ("beta", A::F(2.0)),
                    ("transB", A::I(0)),
                ],
            ),
        ],
        inits: vec![
            tensor("w1", &[3, 2, 3, 3], vals(54, 1)),
            tensor("cb", &[1, 3, 1, 1], vals(3, 2)),
            tensor("w2", &[27, 5], vals(135, 3)),
            tensor("b2", &[5], vals(5, 4)),
            ints_tensor("shape", &[-1, 5]),
            tensor("w3", &[5, 4], vals(20, 5)),
            tensor("c3", &[1, 4], vals(4, 6)),
        ],
        input: vec![None, Some(2), Some(6), Some(6)],
        outputs: vec!["logits"],
        opset: 13,
    }
}

fn import(g: &G) -> Result<relushare_onnx::Imported, OnnxError> {
    import_bytes(&g.bytes(), &ImportOptions::default())
}

fn tract_logits(bytes: &[u8], x: &[f32], dims: [usize; 4]) -> Vec<f32> {
    use tract_onnx::prelude::*;
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.with_input_fact(0, f32::fact(dims).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap();
    let t = Tensor::from_shape(&dims, x).unwrap();
    plan.run(tvec!(t.into())).unwrap()[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[test]
fn folding_rules_and_names_agree_with_tract() {
    let g = rich();
    let imp = import(&g).unwrap();
    let spec = &imp.model.spec;
    let names: Vec<&str> = spec.layers.iter().map(|l| l.name()).collect();
    // Valid identifiers keep their ONNX names; the rest are numbered by operator.
    assert_eq!(
        names,
        ["stem", "gate", "maxpool1", "flatten", "fc1", "relu2", "dropout1", "head"]
    );
    assert_eq!(spec.act_names(), ["gate", "relu2"]);
    assert!(matches!(spec.layers[6], Layer::Dropout { p, .. } if (p - 0.3).abs() < 1e-6));
    let c = count(spec).unwrap();
    assert_eq!(c.total_relus, 3 * 36 + 5);
    assert_eq!(c.maxpool_comparisons, 27 * 3);
    assert_eq!(spec.num_classes, 4);
    for seed in 0..3 {
        let x = vals(72, 100 + seed);
        let ours = reference::forward(&imp.model, &x, &mut |_| false).unwrap();
        let theirs = tract_logits(&g.bytes(), &x, [1, 2, 6, 6]);
        for (a, b) in ours.iter().zip(&theirs) {
            assert!((a - b).abs() < 1e-5, "ours {ours:?} vs tract {theirs:?}");
        }
    }
    // Sharing applies by name: the imported ReLUs take a free-form spec.
    let mut s = spec.clone();
    presets::apply_freeform(&mut s, "gate=channel,relu2=identity").unwrap();
    assert!(matches!(s.act("gate"), Some(ActKind::Shared(_))));
    assert_eq!(count(&s).unwrap().total_relus, 3);
    let e = presets::apply_freeform(&mut s, "relu9=channel")
        .unwrap_err()
        .to_string();
    assert!(e.contains("relu9"), "{e}");
}

/// The error of importing `g`, which must fail.
fn err(g: &G) -> String {
    match import(g) {
        Ok(_) => panic!("imported a graph that must fail"),
        Err(e) => e.to_string(),
    }
}

fn with_node(mut g: G, i: usize, f: impl FnOnce(&mut NodeProto)) -> G {
    f(&mut g.nodes[i]);
    g
}

fn set_attr(n: &mut NodeProto, name: &str, a: A) {
    n.attribute.retain(|x| x.name() != name);
    let tmp = node("X", "", &[], &[], vec![(name, a)]);
    n.attribute.extend(tmp.attribute);
}

#[test]
fn unsupported_operators_shapes_and_patterns_are_clear_errors() {
    let cases: Vec<(G, &[&str])> = vec![
        (
            with_node(rich(), 2, |n| n.op_type = Some("Sigmoid".into())),
            &[
                "node 'gate'",
                "unsupported operator Sigmoid",
                "relushare imports Conv",
            ],
        ),
        (
            with_node(rich(), 2, |n| n.domain = Some("com.microsoft".into())),
            &["gate", "com.microsoft.Relu"],
        ),
        (
            with_node(rich(), 0, |n| set_attr(n, "group", A::I(2))),
            &["node 'stem' (Conv)", "group 2", "group 1"],
        ),
        (
            with_node(rich(), 0, |n| {
                set_attr(n, "pads", A::Ints(vec![0, 0, 1, 1]))
            }),
            &[
                "'stem' (Conv)",
                "pads [0, 0, 1, 1]",
                "same padding on every side",
            ],
        ),
        (
            with_node(rich(), 0, |n| set_attr(n, "dilations", A::Ints(vec![2, 2]))),
            &["'stem' (Conv)", "dilations"],
        ),
        (
            with_node(rich(), 0, |n| set_attr(n, "auto_pad", A::S("SAME_UPPER"))),
            &["'stem' (Conv)", "auto_pad SAME_UPPER"],
        ),
        (
            with_node(rich(), 3, |n| {
                set_attr(n, "kernel_shape", A::Ints(vec![2, 1]))
            }),
            &["'/pool/MaxPool' (MaxPool)", "square kernels"],
        ),
        (
            with_node(rich(), 3, |n| {
                n.op_type = Some("AveragePool".into());
                set_attr(n, "pads", A::Ints(vec![1, 1, 1, 1]));
            }),
            &["(AveragePool)", "without padding"],
        ),
        (
            with_node(rich(), 12, |n| set_attr(n, "transA", A::I(1))),
            &["'head' (Gemm)", "transA"],
        ),
        (
            // x.view(x.size(0), -1) style: the shape is computed by the network.
            with_node(rich(), 11, |n| n.input[1] = "r2".into()),
            &["(Reshape)", "dynamic shape", "torch.flatten"],
        ),
        (
            {
                let mut g = rich();
                g.inits[4] = ints_tensor("shape", &[1, 5, 1]);
                g
            },
            &["(Reshape)", "flatten to [batch, features]"],
        ),
        (
            // A constant added to a ReLU's output has no bias to fold into.
            with_node(rich(), 1, |n| n.input = vec!["cb".into(), "x".into()]),
            &["(Add)", "cannot fold into a bias"],
        ),
        (
            {
                // The MatMul's output is also read by another node: its bias cannot change.
                let mut g = rich();
                g.nodes
                    .insert(8, node("Relu", "", &["m"], &["also"], vec![]));
                g
            },
            &["(Add)", "cannot fold"],
        ),
        (
            {
                let mut g = rich();
                g.input = vec![None, Some(2), None, Some(6)];
                g
            },
            &["input 'x'", "dynamic", "height"],
        ),
        (
            {
                let mut g = rich();
                g.input = vec![Some(4), Some(2), Some(6), Some(6)];
                g
            },
            &["fixed batch of 4"],
        ),
        (
            {
                let mut g = rich();
                g.input = vec![None, Some(72)];
                g
            },
            &["rank 2", "NCHW"],
        ),
        (
            {
                let mut g = rich();
                g.outputs = vec!["logits", "r2"];
                g
            },
            &["2 outputs"],
        ),
        (
            {
                let mut g = rich();
                g.opset = 9;
                g
            },
            &["opset 9", "opsets 11 to"],
        ),
        (
            {
                let mut g = rich();
                g.inits[0].data_location = Some(1);
                g
            },
            &["initializer 'w1'", "external file"],
        ),
        (
            {
                let mut g = rich();
                g.inits[0].float_data.pop();
                g
            },
            &["initializer 'w1'", "53 values"],
        ),
        (
            with_node(rich(), 6, |n| n.input[0] = "p1i".into()),
            &["(MatMul)", "flatten first"],
        ),
    ];
    for (g, want) in cases {
        let e = err(&g);
        for w in want {
            assert!(e.contains(w), "error {e:?} lacks {w:?}");
        }
    }
}

#[test]
fn corrupt_truncated_and_foreign_files_are_clear_errors() {
    let good = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small_maxpool.onnx"),
    )
    .unwrap();
    let png = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gray28_0.png"),
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "empty"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "protobuf decoding failed",
        ),
        ("text", b"hello, this is not a model\n".to_vec(), "ONNX"),
        ("png", png, "ONNX"),
        (
            "protobuf without a graph",
            ModelProto {
                ir_version: Some(8),
                ..Default::default()
            }
            .encode_to_vec(),
            "no graph",
        ),
    ];
    for (what, bytes, want) in cases {
        let e = import_bytes(&bytes, &ImportOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{what}: imported"))
            .to_string();
        assert!(e.contains(want), "{what}: {e:?} lacks {want:?}");
    }
    let e = relushare_onnx::import_file(
        std::path::Path::new("/nonexistent/model.onnx"),
        &ImportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/model.onnx"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random byte edits, truncations and splices of a real export: an error or a model,
    /// never a panic.
    #[test]
    fn mutated_exports_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        small in any::<bool>(),
    ) {
        let bytes = if small {
            rich().bytes()
        } else {
            std::fs::read(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/small_maxpool.onnx"),
            )
            .unwrap()
        };
        let mut b = bytes.clone();
        for (i, v) in &edits {
            let k = i.index(b.len());
            b[k] = *v;
        }
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        let r = import_bytes(&b, &ImportOptions::default());
        if let Ok(imp) = r {
            // Whatever imports is a valid model.
            imp.model.validate().unwrap();
        }
    }
}
