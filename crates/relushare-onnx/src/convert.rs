//! ONNX graph -> relushare [`Model`]: decoding, constants, and one rule per operator.
//!
//! The graph is walked in node order (ONNX requires a topological order). Every value is
//! either a constant (an initializer, a `Constant` node, or an `Identity` of one) or a tensor
//! of the network, identified by its id in the layer graph (`0` the image, `i + 1` the output
//! of layer `i`, as in [`relushare_model::ModelSpec::sources`]). Constants only feed weight,
//! bias, shape and ratio inputs; an `Add` of a constant folds into the bias of the
//! convolution or linear layer just before it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use prost::Message;
use relushare_model::spec::{FORMAT_VERSION, INPUT};
use relushare_model::{ActKind, Arch, Dims, Layer, Model, ModelSpec, Normalization, Tensor};

use crate::proto::{
    tensor_proto::{DataLocation, DataType},
    tensor_shape_proto::dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto,
};
use crate::{OnnxError, Result, MAX_FILE_BYTES, OPSETS};

/// What the model file gets besides the network: input normalisation and class names.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Per-channel normalisation of pixels scaled to [0, 1]; `None`: identity.
    pub normalization: Option<Normalization>,
    /// Class names, one per output; empty: none stored.
    pub class_names: Vec<String>,
}

/// Which ONNX node a layer came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOrigin {
    /// The layer's name in the spec.
    pub layer: String,
    /// The ONNX node's name (or `#index` when it has none) and operator.
    pub node: String,
    pub op: String,
}

/// An imported model and where its layers came from.
#[derive(Debug, Clone)]
pub struct Imported {
    pub model: Model,
    /// The default-domain opset of the file.
    pub opset: i64,
    /// `producer_name producer_version` of the file (e.g. `pytorch 2.5.0`).
    pub producer: String,
    /// One entry per layer, in layer order.
    pub origins: Vec<LayerOrigin>,
}

/// Read and import an ONNX file.
pub fn import_file(path: &Path, opts: &ImportOptions) -> Result<Imported> {
    let io = |source| OnnxError::Io {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(OnnxError::Model(format!(
            "{}: {len} bytes, more than the {MAX_FILE_BYTES} this importer reads",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    import_bytes(&bytes, opts)
}

/// Import an ONNX model from its bytes.
pub fn import_bytes(bytes: &[u8], opts: &ImportOptions) -> Result<Imported> {
    if bytes.is_empty() {
        return Err(OnnxError::Decode("the file is empty".into()));
    }
    let m = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    let graph = m
        .graph
        .as_ref()
        .ok_or_else(|| OnnxError::Model("the file has no graph (is it an ONNX model?)".into()))?;
    if m.ir_version() <= 0 {
        return Err(OnnxError::Model(
            "no IR version (is it an ONNX model?)".into(),
        ));
    }
    let opset = m
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .ok_or_else(|| OnnxError::Model("no opset for the default (ai.onnx) domain".into()))?;
    if !(OPSETS.0..=OPSETS.1).contains(&opset) {
        return Err(OnnxError::Model(format!(
            "opset {opset}: relushare imports opsets {} to {} (torch.onnx.export(..., opset_version=17) for example)",
            OPSETS.0, OPSETS.1
        )));
    }
    let mut c = Converter::new(graph)?;
    for (i, node) in graph.node.iter().enumerate() {
        c.node(i, node)?;
    }
    let producer = format!("{} {}", m.producer_name(), m.producer_version())
        .trim()
        .to_string();
    let (model, origins) = c.finish(graph, opts)?;
    Ok(Imported {
        model,
        opset,
        producer,
        origins,
    })
}

/// A constant tensor: f32 values (weights) or integers (shapes, axes).
#[derive(Debug, Clone)]
struct Const {
    dims: Vec<usize>,
    data: ConstData,
}

#[derive(Debug, Clone)]
enum ConstData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Const {
    fn floats(&self) -> Vec<f32> {
        match &self.data {
            ConstData::F32(v) => v.clone(),
            ConstData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    fn len(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
        }
    }
}

/// A tensor of the network: its id in the layer graph, per-image dims and ONNX rank
/// (4: `[N, C, H, W]`, 2: `[N, F]` with dims `F x 1 x 1`).
#[derive(Debug, Clone, Copy)]
struct Act {
    id: usize,
    dims: Dims,
    rank: usize,
}

#[derive(Debug, Clone)]
enum Value {
    Act(Act),
    Const(Const),
}

/// Per-node context for error messages.
struct At<'a> {
    node: String,
    op: &'a str,
}

impl At<'_> {
    fn err(&self, msg: impl Into<String>) -> OnnxError {
        OnnxError::Node {
            node: self.node.clone(),
            op: self.op.to_string(),
            msg: msg.into(),
        }
    }
}

struct Converter {
    values: HashMap<String, Value>,
    /// Uses of every tensor name: node inputs and graph outputs.
    uses: HashMap<String, usize>,
    layers: Vec<Layer>,
    srcs: Vec<Vec<usize>>,
    params: BTreeMap<String, Tensor>,
    origins: Vec<LayerOrigin>,
    names: Names,
    input: Dims,
}

/// Layer names: a node's own name where it is a plain unique identifier, else
/// `<prefix><k>` with `k` the node's position among the nodes of its operator.
struct Names {
    /// Node names usable as layer names (plain identifiers, unique in the graph).
    own: HashSet<String>,
    used: HashSet<String>,
    counters: HashMap<&'static str, usize>,
}

fn is_identifier(s: &str) -> bool {
    let mut ch = s.chars();
    matches!(ch.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && ch.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
        && s != INPUT
        && s != "flatten"
}

impl Names {
    fn new(graph: &GraphProto) -> Self {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for n in &graph.node {
            *seen.entry(n.name()).or_default() += 1;
        }
        let own: HashSet<String> = seen
            .into_iter()
            .filter(|&(n, k)| k == 1 && is_identifier(n))
            .map(|(n, _)| n.to_string())
            .collect();
        Names {
            used: own.clone(),
            own,
            counters: HashMap::new(),
        }
    }

    fn name(&mut self, node: &NodeProto, prefix: &'static str) -> String {
        let k = self.counters.entry(prefix).or_default();
        *k += 1;
        if self.own.contains(node.name()) {
            return node.name().to_string();
        }
        let mut name = format!("{prefix}{k}");
        let mut extra = 1;
        while self.used.contains(&name) {
            extra += 1;
            name = format!("{prefix}{k}_{extra}");
        }
        self.used.insert(name.clone());
        name
    }
}

fn label(i: usize, node: &NodeProto) -> String {
    if node.name().is_empty() {
        format!("#{i} (output {})", node.output.first().map_or("?", |s| s))
    } else {
        node.name().to_string()
    }
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name() == name)
}

fn attr_i(node: &NodeProto, name: &str, default: i64) -> i64 {
    attr(node, name).and_then(|a| a.i).unwrap_or(default)
}

fn attr_f(node: &NodeProto, name: &str, default: f32) -> f32 {
    attr(node, name).and_then(|a| a.f).unwrap_or(default)
}

fn attr_ints(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(node, name).map(|a| a.ints.clone())
}

fn attr_s(node: &NodeProto, name: &str) -> String {
    attr(node, name)
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .unwrap_or_default()
}

/// A non-negative ONNX size as `usize`, bounded by the spec's limits.
fn size(v: i64, what: &str) -> std::result::Result<usize, String> {
    if v < 0 || v as u64 > relushare_model::spec::MAX_SIDE as u64 * 1024 {
        return Err(format!("{what} {v} is out of range"));
    }
    Ok(v as usize)
}

/// Decode an initializer or a `Constant`'s tensor.
fn tensor_const(t: &TensorProto, what: &str) -> std::result::Result<Const, String> {
    if t.data_location() == DataLocation::External {
        return Err(format!(
            "{what} keeps its data in an external file; export with the weights inside the .onnx file"
        ));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    let mut n: usize = 1;
    for &d in &t.dims {
        let d = size(d, "dimension")?;
        n = n
            .checked_mul(d)
            .filter(|&n| n <= (MAX_FILE_BYTES as usize))
            .ok_or_else(|| format!("{what} has too many elements"))?;
        dims.push(d);
    }
    let raw = t.raw_data.as_deref();
    let ty = DataType::try_from(t.data_type()).unwrap_or(DataType::Undefined);
    let width = match ty {
        DataType::Float | DataType::Int32 => 4,
        DataType::Double | DataType::Int64 => 8,
        _ => {
            return Err(format!(
            "{what} has element type {} (relushare reads float, double, int32 and int64 tensors)",
            ty.as_str_name()
        ))
        }
    };
    if let Some(raw) = raw {
        if raw.len() != n * width {
            return Err(format!(
                "{what} holds {} bytes of raw data for {n} elements of {width} bytes (truncated?)",
                raw.len()
            ));
        }
    }
    let words = |w: usize| raw.map(|r| r.chunks_exact(w));
    let data = match ty {
        DataType::Float => ConstData::F32(match words(4) {
            Some(c) => c
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            None => t.float_data.clone(),
        }),
        DataType::Double => ConstData::F32(match words(8) {
            Some(c) => c
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            None => t.double_data.iter().map(|&x| x as f32).collect(),
        }),
        DataType::Int32 => ConstData::I64(match words(4) {
            Some(c) => c
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
                .collect(),
            None => t.int32_data.iter().map(|&x| x as i64).collect(),
        }),
        _ => ConstData::I64(match words(8) {
            Some(c) => c
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect(),
            None => t.int64_data.clone(),
        }),
    };
    let c = Const { dims, data };
    if c.len() != n {
        return Err(format!(
            "{what} holds {} values for its shape {:?} ({n} elements)",
            c.len(),
            c.dims
        ));
    }
    if let ConstData::F32(v) = &c.data {
        if v.iter().any(|x| !x.is_finite()) {
            return Err(format!("{what} holds NaN or infinite values"));
        }
    }
    Ok(c)
}

/// `[N, C, H, W]` sizes of a pool or convolution: kernel, stride, padding, all square.
struct Window {
    kernel: usize,
    stride: usize,
    pad: usize,
}

/// Reads `kernel_shape`, `strides`, `pads`, `dilations`, `auto_pad` and `ceil_mode` of a
/// pool (or convolution, with `kernel` from its weight) and checks they are square and
/// symmetric.
fn window(at: &At, node: &NodeProto, kernel: Option<[usize; 2]>, dims: Dims) -> Result<Window> {
    let k = match (attr_ints(node, "kernel_shape"), kernel) {
        (Some(ks), w) => {
            if ks.len() != 2 {
                return Err(at.err(format!(
                    "kernel_shape {ks:?}: relushare imports 2-D kernels only"
                )));
            }
            let ks = [
                size(ks[0], "kernel").map_err(|e| at.err(e))?,
                size(ks[1], "kernel").map_err(|e| at.err(e))?,
            ];
            if let Some(w) = w {
                if w != ks {
                    return Err(at.err(format!(
                        "kernel_shape {ks:?} differs from the weight's kernel {w:?}"
                    )));
                }
            }
            ks
        }
        (None, Some(w)) => w,
        (None, None) => return Err(at.err("no kernel_shape attribute")),
    };
    if k[0] != k[1] {
        return Err(at.err(format!(
            "kernel {}x{}: relushare imports square kernels only",
            k[0], k[1]
        )));
    }
    let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1, 1]);
    if strides.len() != 2 || strides[0] != strides[1] {
        return Err(at.err(format!(
            "strides {strides:?}: relushare imports equal strides on both axes only"
        )));
    }
    let stride = size(strides[0], "stride").map_err(|e| at.err(e))?;
    if let Some(d) = attr_ints(node, "dilations") {
        if d.iter().any(|&x| x != 1) {
            return Err(at.err(format!(
                "dilations {d:?}: relushare imports undilated kernels only"
            )));
        }
    }
    let auto = attr_s(node, "auto_pad");
    let pads = match auto.as_str() {
        "" | "NOTSET" => attr_ints(node, "pads").unwrap_or_else(|| vec![0; 4]),
        "VALID" => vec![0; 4],
        other => {
            return Err(at.err(format!(
                "auto_pad {other}: relushare imports explicit symmetric pads (NOTSET) or VALID"
            )))
        }
    };
    if pads.len() != 4 || pads.iter().any(|&p| p != pads[0]) {
        return Err(at.err(format!(
            "pads {pads:?}: relushare imports the same padding on every side only"
        )));
    }
    let pad = size(pads[0], "padding").map_err(|e| at.err(e))?;
    if attr_i(node, "ceil_mode", 0) != 0 && stride > 0 {
        // Accept ceil_mode where rounding up gives the same output size.
        let floor = |n: usize| (n + 2 * pad).saturating_sub(k[0]) / stride;
        let ceil = |n: usize| (n + 2 * pad).saturating_sub(k[0]).div_ceil(stride);
        if floor(dims.h) != ceil(dims.h) || floor(dims.w) != ceil(dims.w) {
            return Err(at.err(
                "ceil_mode 1 changes the output size here: relushare pools round down (ceil_mode 0)",
            ));
        }
    }
    Ok(Window {
        kernel: k[0],
        stride,
        pad,
    })
}

impl Converter {
    fn new(graph: &GraphProto) -> Result<Self> {
        let mut values = HashMap::new();
        for t in &graph.initializer {
            let c = tensor_const(t, &format!("initializer '{}'", t.name()))
                .map_err(OnnxError::Graph)?;
            values.insert(t.name().to_string(), Value::Const(c));
        }
        if !graph.sparse_initializer.is_empty() {
            return Err(OnnxError::Graph(
                "has sparse initializers, which relushare does not read".into(),
            ));
        }
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|v| !values.contains_key(v.name()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(OnnxError::Graph(format!(
                "has {} inputs ({}); relushare imports networks of one image input",
                inputs.len(),
                inputs
                    .iter()
                    .map(|v| v.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let name = input.name();
        let tt = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t,
            _ => return Err(OnnxError::Graph(format!("input '{name}' is not a tensor"))),
        };
        if tt.elem_type() != DataType::Float as i32 {
            return Err(OnnxError::Graph(format!(
                "input '{name}' has element type {}; relushare imports float32 inputs",
                DataType::try_from(tt.elem_type())
                    .map(|t| t.as_str_name())
                    .unwrap_or("unknown")
            )));
        }
        let dims: Vec<Option<i64>> = tt
            .shape
            .as_ref()
            .ok_or_else(|| OnnxError::Graph(format!("input '{name}' has no shape")))?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(dimension::Value::DimValue(v)) => Some(v),
                _ => None,
            })
            .collect();
        if dims.len() != 4 {
            return Err(OnnxError::Graph(format!(
                "input '{name}' has rank {}; relushare imports NCHW images [batch, channels, height, width]",
                dims.len()
            )));
        }
        if let Some(b) = dims[0] {
            if b != 1 {
                return Err(OnnxError::Graph(format!(
                    "input '{name}' has a fixed batch of {b}; export with batch 1 or a symbolic batch dimension"
                )));
            }
        }
        let mut chw = [0usize; 3];
        for (k, what) in ["channels", "height", "width"].iter().enumerate() {
            chw[k] = match dims[k + 1] {
                Some(v) if v > 0 => size(v, what).map_err(OnnxError::Graph)?,
                _ => {
                    return Err(OnnxError::Graph(format!(
                        "input '{name}' has a dynamic or empty {what}: relushare needs static channels, height and width"
                    )))
                }
            };
        }
        let input_dims = Dims::new(chw[0], chw[1], chw[2]);
        if input_dims.len() > relushare_model::spec::MAX_ACTIVATIONS {
            return Err(OnnxError::Graph(format!(
                "input '{name}' ({input_dims}) is too large"
            )));
        }
        values.insert(
            name.to_string(),
            Value::Act(Act {
                id: 0,
                dims: input_dims,
                rank: 4,
            }),
        );
        let mut uses: HashMap<String, usize> = HashMap::new();
        for n in &graph.node {
            for i in n.input.iter().filter(|i| !i.is_empty()) {
                *uses.entry(i.clone()).or_default() += 1;
            }
        }
        for o in &graph.output {
            *uses.entry(o.name().to_string()).or_default() += 1;
        }
        Ok(Converter {
            values,
            uses,
            layers: Vec::new(),
            srcs: Vec::new(),
            params: BTreeMap::new(),
            origins: Vec::new(),
            names: Names::new(graph),
            input: input_dims,
        })
    }

    fn value<'a>(&'a self, at: &At, node: &'a NodeProto, k: usize) -> Result<&'a Value> {
        let name = node
            .input
            .get(k)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| at.err(format!("input {k} is missing")))?;
        self.values.get(name).ok_or_else(|| {
            at.err(format!(
                "reads '{name}', which no earlier node, initializer or graph input produces"
            ))
        })
    }

    fn act(&self, at: &At, node: &NodeProto, k: usize) -> Result<Act> {
        match self.value(at, node, k)? {
            Value::Act(a) => Ok(*a),
            Value::Const(_) => Err(at.err(format!(
                "input {k} ('{}') is a constant; relushare imports this operator on the network's tensors only",
                node.input[k]
            ))),
        }
    }

    fn constant(&self, at: &At, node: &NodeProto, k: usize, what: &str) -> Result<Const> {
        match self.value(at, node, k)? {
            Value::Const(c) => Ok(c.clone()),
            Value::Act(_) => Err(at.err(format!(
                "{what} ('{}') is computed by the network; relushare needs it constant (an initializer)",
                node.input[k]
            ))),
        }
    }

    fn optional_const(
        &self,
        at: &At,
        node: &NodeProto,
        k: usize,
        what: &str,
    ) -> Result<Option<Const>> {
        if node.input.get(k).is_none_or(|s| s.is_empty()) {
            return Ok(None);
        }
        self.constant(at, node, k, what).map(Some)
    }

    /// Output `k` of `node` must not be read by anything (Dropout's mask, MaxPool's indices).
    fn unused_output(&self, at: &At, node: &NodeProto, k: usize, what: &str) -> Result<()> {
        match node.output.get(k) {
            Some(o) if !o.is_empty() && self.uses.get(o).copied().unwrap_or(0) > 0 => {
                Err(at.err(format!(
                    "its {what} output '{o}' is used; relushare computes the first output only"
                )))
            }
            _ => Ok(()),
        }
    }

    fn set_output(&mut self, at: &At, node: &NodeProto, v: Value) -> Result<()> {
        let out = node
            .output
            .first()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| at.err("has no output"))?;
        if self.values.contains_key(out) {
            return Err(at.err(format!(
                "writes '{out}', which is already defined (the graph is not in SSA form)"
            )));
        }
        self.values.insert(out.clone(), v);
        Ok(())
    }

    /// Append a layer reading `src` and make it the node's output.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        at: &At,
        node: &NodeProto,
        layer: Layer,
        src: Vec<usize>,
        in_dims: Dims,
        rank: usize,
        params: Vec<(String, Tensor)>,
    ) -> Result<()> {
        let dims = layer
            .output_dims(in_dims)
            .map_err(|e| at.err(e.to_string()))?;
        self.origins.push(LayerOrigin {
            layer: layer.name().to_string(),
            node: at.node.clone(),
            op: at.op.to_string(),
        });
        self.layers.push(layer);
        self.srcs.push(src);
        self.params.extend(params);
        let id = self.layers.len();
        self.set_output(at, node, Value::Act(Act { id, dims, rank }))
    }

    fn node(&mut self, i: usize, node: &NodeProto) -> Result<()> {
        let op = node.op_type();
        let at = At {
            node: label(i, node),
            op,
        };
        if !(node.domain().is_empty() || node.domain() == "ai.onnx") {
            return Err(OnnxError::Unsupported {
                node: at.node,
                op: format!("{}.{op}", node.domain()),
            });
        }
        match op {
            "Constant" => {
                let c = if let Some(t) = attr(node, "value").and_then(|a| a.t.as_ref()) {
                    tensor_const(t, "its value").map_err(|e| at.err(e))?
                } else if let Some(f) = attr(node, "value_float").and_then(|a| a.f) {
                    Const {
                        dims: vec![],
                        data: ConstData::F32(vec![f]),
                    }
                } else if let Some(a) = attr(node, "value_floats") {
                    Const {
                        dims: vec![a.floats.len()],
                        data: ConstData::F32(a.floats.clone()),
                    }
                } else if let Some(v) = attr(node, "value_int").and_then(|a| a.i) {
                    Const {
                        dims: vec![],
                        data: ConstData::I64(vec![v]),
                    }
                } else if let Some(a) = attr(node, "value_ints") {
                    Const {
                        dims: vec![a.ints.len()],
                        data: ConstData::I64(a.ints.clone()),
                    }
                } else {
                    return Err(at.err(
                        "relushare reads Constant nodes with a value, value_float(s) or value_int(s) attribute (not sparse or string values)",
                    ));
                };
                self.set_output(&at, node, Value::Const(c))
            }
            "Identity" => {
                let v = self.value(&at, node, 0)?.clone();
                self.set_output(&at, node, v)
            }
            "Dropout" => {
                let x = self.act(&at, node, 0)?;
                self.unused_output(&at, node, 1, "mask")?;
                let p = match self.optional_const(&at, node, 1, "the ratio")? {
                    Some(c) => c.floats().first().copied().unwrap_or(0.5),
                    None => attr_f(node, "ratio", 0.5),
                };
                if !(0.0..1.0).contains(&p) {
                    return Err(at.err(format!("ratio {p} is not in [0, 1)")));
                }
                let name = self.names.name(node, "dropout");
                self.push(
                    &at,
                    node,
                    Layer::Dropout { name, p },
                    vec![x.id],
                    x.dims,
                    x.rank,
                    vec![],
                )
            }
            "Relu" => {
                let x = self.act(&at, node, 0)?;
                let name = self.names.name(node, "relu");
                self.push(
                    &at,
                    node,
                    Layer::Act {
                        name,
                        kind: ActKind::Relu,
                    },
                    vec![x.id],
                    x.dims,
                    x.rank,
                    vec![],
                )
            }
            "Conv" => self.conv(&at, node),
            "Gemm" => self.gemm(&at, node),
            "MatMul" => {
                let x = self.flat(&at, node)?;
                let b = self.constant(&at, node, 1, "the weight")?;
                let [fin, fout] = b.dims[..] else {
                    return Err(at.err(format!(
                        "weight of shape {:?}: relushare imports a 2-D weight [in, out]",
                        b.dims
                    )));
                };
                self.linear(
                    &at,
                    node,
                    x,
                    fin,
                    fout,
                    transpose(&b.floats(), fin, fout),
                    None,
                )
            }
            "Add" => self.add(&at, node),
            "AveragePool" => {
                let x = self.image(&at, node)?;
                let w = window(&at, node, None, x.dims)?;
                if w.pad != 0 {
                    return Err(at.err(format!(
                        "padding {}: relushare imports average pools without padding",
                        w.pad
                    )));
                }
                let name = self.names.name(node, "pool");
                self.push(
                    &at,
                    node,
                    Layer::AvgPool {
                        name,
                        kernel: w.kernel,
                        stride: w.stride,
                    },
                    vec![x.id],
                    x.dims,
                    4,
                    vec![],
                )
            }
            "MaxPool" => {
                let x = self.image(&at, node)?;
                self.unused_output(&at, node, 1, "indices")?;
                let w = window(&at, node, None, x.dims)?;
                let name = self.names.name(node, "maxpool");
                self.push(
                    &at,
                    node,
                    Layer::MaxPool {
                        name,
                        kernel: w.kernel,
                        stride: w.stride,
                        padding: w.pad,
                    },
                    vec![x.id],
                    x.dims,
                    4,
                    vec![],
                )
            }
            "GlobalAveragePool" => {
                let x = self.image(&at, node)?;
                let name = self.names.name(node, "gap");
                self.push(
                    &at,
                    node,
                    Layer::GlobalAvgPool { name },
                    vec![x.id],
                    x.dims,
                    4,
                    vec![],
                )
            }
            "BatchNormalization" => self.batchnorm(&at, node),
            "Flatten" => {
                let x = self.act(&at, node, 0)?;
                let axis = attr_i(node, "axis", 1);
                if axis != 1 && axis != 1 - x.rank as i64 {
                    return Err(at.err(format!(
                        "axis {axis}: relushare imports Flatten to [batch, features] (axis 1)"
                    )));
                }
                self.flatten(&at, node, x)
            }
            "Reshape" => {
                let x = self.act(&at, node, 0)?;
                let shape = match self.value(&at, node, 1)? {
                    Value::Const(Const {
                        data: ConstData::I64(s),
                        ..
                    }) => s.clone(),
                    Value::Const(_) => return Err(at.err("the target shape is not int64")),
                    Value::Act(_) => {
                        return Err(at.err(
                            "the target shape is computed at run time (a dynamic shape); export with static shapes, e.g. torch.flatten(x, 1) instead of x.view(x.size(0), -1)",
                        ))
                    }
                };
                let allowzero = attr_i(node, "allowzero", 0) != 0;
                let input: Vec<i64> = if x.rank == 4 {
                    vec![1, x.dims.c as i64, x.dims.h as i64, x.dims.w as i64]
                } else {
                    vec![1, x.dims.len() as i64]
                };
                let total = x.dims.len() as i64;
                let mut out: Vec<i64> = shape
                    .iter()
                    .enumerate()
                    .map(|(k, &s)| {
                        if s == 0 && !allowzero {
                            input.get(k).copied().unwrap_or(-2)
                        } else {
                            s
                        }
                    })
                    .collect();
                if let Some(k) = out.iter().position(|&s| s == -1) {
                    let known: i64 = out
                        .iter()
                        .enumerate()
                        .filter(|&(j, _)| j != k)
                        .map(|(_, &s)| s)
                        .try_fold(1i64, |a, s| (s > 0).then(|| a.checked_mul(s)).flatten())
                        .unwrap_or(0);
                    if known > 0 && total % known == 0 {
                        out[k] = total / known;
                    }
                }
                if out == [1, total] {
                    self.flatten(&at, node, x)
                } else if out == input {
                    self.set_output(&at, node, Value::Act(x))
                } else {
                    Err(at.err(format!(
                        "reshape of [batch, {}] to {shape:?}: relushare imports a Reshape only as a flatten to [batch, features] ([1, {total}] or [-1, {total}])",
                        input[1..]
                            .iter()
                            .map(|v| v.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
            _ => Err(OnnxError::Unsupported {
                node: at.node,
                op: op.to_string(),
            }),
        }
    }

    /// Input 0 as an NCHW tensor.
    fn image(&self, at: &At, node: &NodeProto) -> Result<Act> {
        let x = self.act(at, node, 0)?;
        if x.rank != 4 {
            return Err(at.err(format!(
                "reads a rank-{} tensor; this operator needs an NCHW tensor",
                x.rank
            )));
        }
        Ok(x)
    }

    /// Input 0 as a `[batch, features]` tensor.
    fn flat(&self, at: &At, node: &NodeProto) -> Result<Act> {
        let x = self.act(at, node, 0)?;
        if x.rank != 2 {
            return Err(at.err(format!(
                "reads a rank-{} tensor; relushare imports this operator on [batch, features] tensors (flatten first)",
                x.rank
            )));
        }
        Ok(x)
    }

    fn flatten(&mut self, at: &At, node: &NodeProto, x: Act) -> Result<()> {
        if x.rank == 2 || x.dims.plane() == 1 {
            // Already one value per feature in C, H, W order: nothing to compute.
            return self.set_output(
                at,
                node,
                Value::Act(Act {
                    rank: 2,
                    dims: Dims::new(x.dims.len(), 1, 1),
                    ..x
                }),
            );
        }
        self.push(at, node, Layer::Flatten, vec![x.id], x.dims, 2, vec![])
    }

    fn conv(&mut self, at: &At, node: &NodeProto) -> Result<()> {
        let x = self.image(at, node)?;
        let w = self.constant(at, node, 1, "the weight")?;
        let [out_ch, in_ch, kh, kw] = w.dims[..] else {
            return Err(at.err(format!(
                "weight of shape {:?}: relushare imports 2-D convolutions (weight [out, in, k, k])",
                w.dims
            )));
        };
        let group = attr_i(node, "group", 1);
        if group != 1 {
            return Err(at.err(format!(
                "group {group}: relushare imports ordinary convolutions (group 1) only, not grouped or depthwise ones"
            )));
        }
        if in_ch != x.dims.c {
            return Err(at.err(format!(
                "weight expects {in_ch} input channels, the input has {}",
                x.dims.c
            )));
        }
        let win = window(at, node, Some([kh, kw]), x.dims)?;
        let bias = match self.optional_const(at, node, 2, "the bias")? {
            Some(b) if b.len() == out_ch => b.floats(),
            Some(b) => {
                return Err(at.err(format!(
                    "bias of shape {:?} for {out_ch} output channels",
                    b.dims
                )))
            }
            None => vec![0.0; out_ch],
        };
        let name = self.names.name(node, "conv");
        let params = vec![
            (
                format!("{name}.weight"),
                Tensor::new(vec![out_ch, in_ch, kh, kw], w.floats()),
            ),
            (format!("{name}.bias"), Tensor::new(vec![out_ch], bias)),
        ];
        self.push(
            at,
            node,
            Layer::Conv {
                name,
                in_ch,
                out_ch,
                kernel: win.kernel,
                stride: win.stride,
                padding: win.pad,
            },
            vec![x.id],
            x.dims,
            4,
            params,
        )
    }

    fn gemm(&mut self, at: &At, node: &NodeProto) -> Result<()> {
        let x = self.flat(at, node)?;
        if attr_i(node, "transA", 0) != 0 {
            return Err(
                at.err("transA 1 transposes the batch: relushare imports Gemm with transA 0")
            );
        }
        let b = self.constant(at, node, 1, "the weight (B)")?;
        let [r, c] = b.dims[..] else {
            return Err(at.err(format!("weight of shape {:?} is not 2-D", b.dims)));
        };
        let (alpha, beta) = (attr_f(node, "alpha", 1.0), attr_f(node, "beta", 1.0));
        let (fin, fout, mut w) = if attr_i(node, "transB", 0) != 0 {
            (c, r, b.floats())
        } else {
            (r, c, transpose(&b.floats(), r, c))
        };
        w.iter_mut().for_each(|v| *v *= alpha);
        let bias = match self.optional_const(at, node, 2, "the bias (C)")? {
            None => None,
            Some(cb) => {
                let v = cb.floats();
                let ok_shape = cb.dims.iter().product::<usize>() == v.len()
                    && (v.len() == 1 || (v.len() == fout && cb.dims.last() == Some(&fout)));
                if !ok_shape || cb.dims.len() > 2 || (cb.dims.len() == 2 && cb.dims[0] != 1) {
                    return Err(at.err(format!(
                        "bias C of shape {:?}: relushare imports a bias of shape [{fout}], [1, {fout}] or a scalar",
                        cb.dims
                    )));
                }
                Some(if v.len() == 1 {
                    vec![v[0] * beta; fout]
                } else {
                    v.iter().map(|&x| x * beta).collect()
                })
            }
        };
        self.linear(at, node, x, fin, fout, w, bias)
    }

    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        at: &At,
        node: &NodeProto,
        x: Act,
        fin: usize,
        fout: usize,
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
    ) -> Result<()> {
        if fin != x.dims.len() {
            return Err(at.err(format!(
                "weight expects {fin} input features, the input has {}",
                x.dims.len()
            )));
        }
        let name = self.names.name(node, "fc");
        let params = vec![
            (
                format!("{name}.weight"),
                Tensor::new(vec![fout, fin], weight),
            ),
            (
                format!("{name}.bias"),
                Tensor::new(vec![fout], bias.unwrap_or_else(|| vec![0.0; fout])),
            ),
        ];
        self.push(
            at,
            node,
            Layer::Linear {
                name,
                in_f: fin,
                out_f: fout,
            },
            vec![x.id],
            x.dims,
            2,
            params,
        )
    }

    fn add(&mut self, at: &At, node: &NodeProto) -> Result<()> {
        let (a, b) = (self.value(at, node, 0)?, self.value(at, node, 1)?);
        match (a.clone(), b.clone()) {
            (Value::Act(a), Value::Act(b)) => {
                if a.dims != b.dims || a.rank != b.rank {
                    return Err(at.err(format!(
                        "adds tensors of shapes {} and {}: relushare imports Add of equal shapes (no broadcasting)",
                        a.dims, b.dims
                    )));
                }
                let name = self.names.name(node, "add");
                self.push(
                    at,
                    node,
                    Layer::Add { name },
                    vec![a.id, b.id],
                    a.dims,
                    a.rank,
                    vec![],
                )
            }
            (Value::Act(x), Value::Const(c)) | (Value::Const(c), Value::Act(x)) => {
                let operand = if matches!(a, Value::Act(_)) { 0 } else { 1 };
                self.fold_bias(at, x, &node.input[operand], &c)?;
                self.set_output(at, node, Value::Act(x))
            }
            (Value::Const(_), Value::Const(_)) => Err(at.err(
                "adds two constants; relushare does not fold constant arithmetic (export with do_constant_folding=True)",
            )),
        }
    }

    /// `x + c` where `x` is the output of a convolution or linear layer that nothing else
    /// reads: `c` (one value per channel / feature, or a scalar) joins that layer's bias.
    fn fold_bias(&mut self, at: &At, x: Act, xname: &str, c: &Const) -> Result<()> {
        let cant = |why: &str| {
            at.err(format!(
                "adds a constant to '{xname}', which cannot fold into a bias: {why}; relushare imports Add of a constant only right after a Conv, Gemm or MatMul"
            ))
        };
        let Some(layer) = x.id.checked_sub(1).map(|i| &self.layers[i]) else {
            return Err(cant("it is the graph's input"));
        };
        let (lname, out) = match layer {
            Layer::Conv { name, out_ch, .. } => (name.clone(), *out_ch),
            Layer::Linear { name, out_f, .. } => (name.clone(), *out_f),
            other => return Err(cant(&format!("it is the output of {}", other.name()))),
        };
        let aliases = self
            .values
            .values()
            .filter(|v| matches!(v, Value::Act(a) if a.id == x.id))
            .count();
        if self.uses.get(xname).copied().unwrap_or(0) != 1 || aliases != 1 {
            return Err(cant("it is also read elsewhere"));
        }
        let v = c.floats();
        // One value per channel / feature: [C] or [1, C] on [batch, features]; [C, 1, 1] or
        // [1, C, 1, 1] on NCHW. Or a single value.
        let axis_from_end = c.dims.iter().rev().position(|&d| d != 1);
        let want = if x.rank == 4 { 2 } else { 0 };
        let per_channel = v.len() == out && c.dims.len() <= x.rank && axis_from_end == Some(want);
        if !(per_channel || (v.len() == 1 && c.dims.len() <= x.rank)) {
            return Err(cant(&format!(
                "the constant of shape {:?} is not one value per output channel of {lname}",
                c.dims
            )));
        }
        let bias = self
            .params
            .get_mut(&format!("{lname}.bias"))
            .ok_or_else(|| cant("the layer has no bias"))?;
        for (o, b) in bias.data.iter_mut().enumerate() {
            *b += if v.len() == 1 { v[0] } else { v[o] };
        }
        Ok(())
    }

    fn batchnorm(&mut self, at: &At, node: &NodeProto) -> Result<()> {
        let x = self.act(at, node, 0)?;
        if attr_i(node, "training_mode", 0) != 0 {
            return Err(at.err("training_mode 1: export the model in eval mode (model.eval())"));
        }
        for k in 1..5 {
            self.unused_output(at, node, k, "running statistics")?;
        }
        let c = x.dims.c;
        let mut p = Vec::new();
        for (k, what) in ["weight", "bias", "running_mean", "running_var"]
            .iter()
            .enumerate()
        {
            let t = self.constant(at, node, k + 1, what)?;
            if t.len() != c {
                return Err(at.err(format!("{what} has {} values for {c} channels", t.len())));
            }
            p.push((*what, t.floats()));
        }
        if p[3].1.iter().any(|&v| v < 0.0) {
            return Err(at.err("running_var holds negative values"));
        }
        let eps = attr_f(node, "epsilon", 1e-5);
        let name = self.names.name(node, "bn");
        let params = p
            .into_iter()
            .map(|(what, v)| (format!("{name}.{what}"), Tensor::new(vec![c], v)))
            .collect();
        self.push(
            at,
            node,
            Layer::BatchNorm { name, eps },
            vec![x.id],
            x.dims,
            x.rank,
            params,
        )
    }

    fn finish(self, graph: &GraphProto, opts: &ImportOptions) -> Result<(Model, Vec<LayerOrigin>)> {
        let [out] = graph.output.as_slice() else {
            return Err(OnnxError::Graph(format!(
                "has {} outputs; relushare imports networks with one output (the logits)",
                graph.output.len()
            )));
        };
        let act = match self.values.get(out.name()) {
            Some(Value::Act(a)) => *a,
            Some(Value::Const(_)) => {
                return Err(OnnxError::Graph(format!(
                    "output '{}' is a constant",
                    out.name()
                )))
            }
            None => {
                return Err(OnnxError::Graph(format!(
                    "output '{}' is produced by no node",
                    out.name()
                )))
            }
        };
        if self.layers.is_empty() {
            return Err(OnnxError::Graph("has no layers".into()));
        }
        if act.id != self.layers.len() {
            return Err(OnnxError::Graph(format!(
                "output '{}' is not the last layer's output (the nodes after it compute nothing that is used)",
                out.name()
            )));
        }
        let c = self.input.c;
        let normalization = opts
            .normalization
            .clone()
            .unwrap_or_else(|| Normalization::identity(c));
        let mut spec = ModelSpec {
            format_version: FORMAT_VERSION,
            arch: Arch::Custom,
            preset: "imported".into(),
            input: self.input,
            num_classes: act.dims.len(),
            layers: Vec::new(),
            normalization,
            inputs: BTreeMap::new(),
            class_names: opts.class_names.clone(),
        };
        spec.set_graph(self.layers, &self.srcs)?;
        let model = Model {
            spec,
            params: self.params,
            group_maps: BTreeMap::new(),
        };
        model.validate()?;
        // Fixed-point and secure inference fold every batch norm: check now that they can.
        model.fold_batchnorm()?;
        Ok((model, self.origins))
    }
}

/// `[r, c]` row-major -> `[c, r]`.
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    out
}

/// One row of an import summary: a layer, what it computes, its ONNX origin and output.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRow {
    pub layer: String,
    pub kind: String,
    pub node: String,
    pub op: String,
    pub output: Dims,
}

impl Imported {
    /// Every layer with a short description, its ONNX node and its output dimensions.
    pub fn rows(&self) -> Result<Vec<LayerRow>> {
        let dims = self.model.spec.dims()?;
        Ok(self
            .model
            .spec
            .layers
            .iter()
            .zip(&self.origins)
            .enumerate()
            .map(|(i, (l, o))| LayerRow {
                layer: l.name().to_string(),
                kind: describe(l),
                node: o.node.clone(),
                op: o.op.clone(),
                output: dims[i + 1],
            })
            .collect())
    }
}

/// A short description of a layer, e.g. `conv 3x3 stride 1 pad 1, 3 -> 64`.
pub fn describe(l: &Layer) -> String {
    match l {
        Layer::Conv {
            in_ch,
            out_ch,
            kernel,
            stride,
            padding,
            ..
        } => format!("conv {kernel}x{kernel} stride {stride} pad {padding}, {in_ch} -> {out_ch}"),
        Layer::Linear { in_f, out_f, .. } => format!("linear {in_f} -> {out_f}"),
        Layer::AvgPool { kernel, stride, .. } => {
            format!("average pool {kernel}x{kernel} stride {stride}")
        }
        Layer::MaxPool {
            kernel,
            stride,
            padding,
            ..
        } => format!("max pool {kernel}x{kernel} stride {stride} pad {padding}"),
        Layer::GlobalAvgPool { .. } => "global average pool".into(),
        Layer::BatchNorm { eps, .. } => format!("batch norm (eps {eps:e})"),
        Layer::Act { kind, .. } => kind.describe(),
        Layer::Dropout { p, .. } => format!("dropout {p} (identity at inference)"),
        Layer::Flatten => "flatten".into(),
        Layer::Add { .. } => "add (residual)".into(),
    }
}
