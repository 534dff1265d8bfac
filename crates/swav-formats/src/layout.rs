//! Parameter-name layouts of a SwAV model, and the one table that maps between them.
//!
//! - [`Layout::Torch`]: torchvision / facebookresearch/swav (`src/resnet50.py`): `conv1`,
//!   `bn1.running_mean`, `layer1.0.downsample.0`, `projection_head.{0,1,3}`,
//!   `prototypes.weight` `[K, D]`; Linear weights `[out, in]`.
//! - [`Layout::Paddle`]: PASSL (`passl/modeling`): `backbone.` prefix, BN `_mean`/`_variance`,
//!   `neck.projection_neck.{0,1,3}`, `head.prototypes.weight` `[D, K]`; Linear weights
//!   `[in, out]`.
//! - [`Layout::Burn`]: this project's Burn modules (resnet-burn naming): `layer1.blocks.0`,
//!   `downsample.{conv,bn}`, BN `gamma`/`beta`, `projection_head.{hidden,bn,out}`,
//!   `prototypes.heads.{i}`; Linear weights `[in, out]`.
//!
//! A backbone on its own (what `swav-extract` writes) has no `backbone.` prefix in any layout;
//! with a head beside it, Paddle and Burn put the backbone under `backbone.`.

use crate::tensor::{DType, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use thiserror::Error;

/// A naming convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// torchvision / facebookresearch/swav.
    Torch,
    /// PaddlePaddle / PASSL.
    Paddle,
    /// This project's Burn modules.
    Burn,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Torch => "torch",
            Layout::Paddle => "paddle",
            Layout::Burn => "burn",
        })
    }
}

/// Why names could not be mapped.
#[derive(Debug, Error, PartialEq)]
pub enum LayoutError {
    /// Nothing in the names tells the layout.
    #[error("cannot tell the layout of these tensors (none of torch, paddle or burn names); pass --from-layout")]
    Undetected,
    /// Names the table has no rule for.
    #[error("{count} tensor name(s) are not part of a SwAV/ResNet model in the {layout} layout, e.g. {examples}")]
    Unknown {
        layout: Layout,
        count: usize,
        examples: String,
    },
    /// Two names map to one.
    #[error("two tensors map to the same name '{0}'")]
    Duplicate(String),
}

/// What a module is, which decides its parameter names and whether its weight is transposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Conv,
    Bn,
    Linear,
    /// Prototypes: a Linear without bias.
    Proto,
}

/// Which naming alternative a rule renders, decided by the whole model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    First,
    /// Projection output Linear: `.3` after a BN, `.2` without one, bare without a hidden layer.
    ProjOut,
    /// Prototypes: bare with one head, numbered with several.
    Proto,
}

/// One module of the model under each layout's name. `{L}`, `{i}`, `{c}` stand for numbers.
struct Rule {
    kind: Kind,
    backbone: bool,
    pick: Pick,
    torch: &'static [&'static str],
    paddle: &'static [&'static str],
    burn: &'static [&'static str],
}

/// The table. The first alternative is what is written unless `pick` says otherwise; every
/// alternative is accepted on input.
const RULES: &[Rule] = &[
    Rule {
        kind: Kind::Conv,
        backbone: true,
        pick: Pick::First,
        torch: &["conv1"],
        paddle: &["conv1"],
        burn: &["conv1"],
    },
    Rule {
        kind: Kind::Bn,
        backbone: true,
        pick: Pick::First,
        torch: &["bn1"],
        paddle: &["bn1"],
        burn: &["bn1"],
    },
    Rule {
        kind: Kind::Conv,
        backbone: true,
        pick: Pick::First,
        torch: &["layer{L}.{i}.conv{c}"],
        paddle: &["layer{L}.{i}.conv{c}"],
        burn: &["layer{L}.blocks.{i}.conv{c}"],
    },
    Rule {
        kind: Kind::Bn,
        backbone: true,
        pick: Pick::First,
        torch: &["layer{L}.{i}.bn{c}"],
        paddle: &["layer{L}.{i}.bn{c}"],
        burn: &["layer{L}.blocks.{i}.bn{c}"],
    },
    Rule {
        kind: Kind::Conv,
        backbone: true,
        pick: Pick::First,
        torch: &["layer{L}.{i}.downsample.0"],
        paddle: &["layer{L}.{i}.downsample.0"],
        burn: &["layer{L}.blocks.{i}.downsample.conv"],
    },
    Rule {
        kind: Kind::Bn,
        backbone: true,
        pick: Pick::First,
        torch: &["layer{L}.{i}.downsample.1"],
        paddle: &["layer{L}.{i}.downsample.1"],
        burn: &["layer{L}.blocks.{i}.downsample.bn"],
    },
    Rule {
        kind: Kind::Linear,
        backbone: false,
        pick: Pick::First,
        torch: &["projection_head.0"],
        paddle: &["neck.projection_neck.0"],
        burn: &["projection_head.hidden"],
    },
    Rule {
        kind: Kind::Bn,
        backbone: false,
        pick: Pick::First,
        torch: &["projection_head.1"],
        paddle: &["neck.projection_neck.1"],
        burn: &["projection_head.bn"],
    },
    Rule {
        kind: Kind::Linear,
        backbone: false,
        pick: Pick::ProjOut,
        torch: &["projection_head.3", "projection_head.2", "projection_head"],
        paddle: &[
            "neck.projection_neck.3",
            "neck.projection_neck.2",
            "neck.projection_neck",
        ],
        burn: &["projection_head.out"],
    },
    Rule {
        kind: Kind::Proto,
        backbone: false,
        pick: Pick::Proto,
        torch: &["prototypes", "prototypes.prototypes{i}"],
        paddle: &["head.prototypes", "head.prototypes.prototypes{i}"],
        burn: &["prototypes.heads.{i}"],
    },
    Rule {
        kind: Kind::Linear,
        backbone: false,
        pick: Pick::First,
        torch: &["linear", "fc"],
        paddle: &["head.fc_cls"],
        burn: &["linear"],
    },
];

/// Canonical parameter of a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Param {
    Weight,
    Bias,
    Mean,
    Var,
    Tracked,
}

/// Parameter names per kind: (param, torch, paddle, burn); `""` = the layout has none.
fn params(kind: Kind) -> &'static [(Param, &'static str, &'static str, &'static str)] {
    match kind {
        Kind::Conv => &[
            (Param::Weight, "weight", "weight", "weight"),
            (Param::Bias, "bias", "bias", "bias"),
        ],
        Kind::Linear => &[
            (Param::Weight, "weight", "weight", "weight"),
            (Param::Bias, "bias", "bias", "bias"),
        ],
        Kind::Proto => &[(Param::Weight, "weight", "weight", "weight")],
        Kind::Bn => &[
            (Param::Weight, "weight", "weight", "gamma"),
            (Param::Bias, "bias", "bias", "beta"),
            (Param::Mean, "running_mean", "_mean", "running_mean"),
            (Param::Var, "running_var", "_variance", "running_var"),
            (Param::Tracked, "num_batches_tracked", "", ""),
        ],
    }
}

fn param_name(p: &(Param, &'static str, &'static str, &'static str), l: Layout) -> &'static str {
    match l {
        Layout::Torch => p.1,
        Layout::Paddle => p.2,
        Layout::Burn => p.3,
    }
}

impl Rule {
    fn names(&self, l: Layout) -> &'static [&'static str] {
        match l {
            Layout::Torch => self.torch,
            Layout::Paddle => self.paddle,
            Layout::Burn => self.burn,
        }
    }
}

/// Numbers captured from a name by `{L}`, `{i}`, `{c}`.
type Captures = [Option<u32>; 3];

fn slot(c: char) -> usize {
    match c {
        'L' => 0,
        'i' => 1,
        _ => 2,
    }
}

/// Match `name` against a pattern segment by segment.
fn match_pattern(pattern: &str, name: &str) -> Option<Captures> {
    let mut caps: Captures = [None; 3];
    let ps: Vec<&str> = pattern.split('.').collect();
    let ns: Vec<&str> = name.split('.').collect();
    if ps.len() != ns.len() {
        return None;
    }
    for (p, n) in ps.iter().zip(&ns) {
        if let Some(open) = p.find('{') {
            let prefix = &p[..open];
            let var = p[open + 1..].chars().next()?;
            let digits = n.strip_prefix(prefix)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 6
            {
                return None;
            }
            caps[slot(var)] = Some(digits.parse().ok()?);
        } else if p != n {
            return None;
        }
    }
    Some(caps)
}

fn render_pattern(pattern: &str, caps: &Captures) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '{' {
            let var = chars.next().unwrap_or('i');
            chars.next(); // '}'
            out.push_str(&caps[slot(var)].unwrap_or(0).to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// A name understood through the table.
#[derive(Debug, Clone)]
struct Canon {
    rule: usize,
    caps: Captures,
    param: Param,
}

/// Facts about the whole model that decide some names.
#[derive(Debug, Default)]
struct Context {
    has_head: bool,
    head_bn: bool,
    head_hidden: bool,
    protos: usize,
}

fn parse(name: &str, l: Layout) -> Option<Canon> {
    let (module, leaf) = name.rsplit_once('.')?;
    let module_bb = match l {
        Layout::Torch => module,
        _ => module.strip_prefix("backbone.").unwrap_or(module),
    };
    for (ri, rule) in RULES.iter().enumerate() {
        let m = if rule.backbone { module_bb } else { module };
        for pat in rule.names(l) {
            if let Some(caps) = match_pattern(pat, m) {
                let p = params(rule.kind)
                    .iter()
                    .find(|p| !param_name(p, l).is_empty() && param_name(p, l) == leaf)?;
                return Some(Canon {
                    rule: ri,
                    caps,
                    param: p.0,
                });
            }
        }
    }
    None
}

/// Guess the layout of a set of tensor names.
pub fn detect<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Layout, LayoutError> {
    let mut votes = [0usize; 3];
    for n in names {
        let leaf = n.rsplit('.').next().unwrap_or(n);
        if matches!(leaf, "gamma" | "beta")
            || n.contains(".blocks.")
            || n.contains("prototypes.heads.")
        {
            votes[2] += 1;
        } else if matches!(leaf, "_mean" | "_variance")
            || n.starts_with("neck.")
            || n.starts_with("head.")
        {
            votes[1] += 1;
        } else if matches!(leaf, "running_mean" | "running_var" | "num_batches_tracked")
            || n.starts_with("projection_head.")
            || n.starts_with("prototypes.")
        {
            votes[0] += 1;
        }
    }
    let best = (0..3).max_by_key(|&i| votes[i]).unwrap();
    if votes[best] == 0 {
        return Err(LayoutError::Undetected);
    }
    Ok([Layout::Torch, Layout::Paddle, Layout::Burn][best])
}

/// The layout of a lone classifier — a Linear's `weight` and `bias` and nothing else, as
/// facebookresearch's `eval_linear.py` (`linear.*`), torchvision (`fc.*`) and PASSL
/// (`head.fc_cls.*`) save one — which [`detect`] cannot tell from `linear`/`fc` alone: those
/// are torch's names in a file `torch.save` wrote (`torch_file`), and this project's otherwise
/// (whose files record their layout). `None` when the names are not a lone classifier.
pub fn lone_classifier<'a>(
    names: impl IntoIterator<Item = &'a str>,
    torch_file: bool,
) -> Option<Layout> {
    let mut paddle = None;
    let mut any = false;
    for n in names {
        let (module, leaf) = n.rsplit_once('.')?;
        if !matches!(leaf, "weight" | "bias") {
            return None;
        }
        let is_paddle = match module {
            "head.fc_cls" => true,
            "linear" | "fc" => false,
            _ => return None,
        };
        if *paddle.get_or_insert(is_paddle) != is_paddle {
            return None;
        }
        any = true;
    }
    match (any, paddle) {
        (true, Some(true)) => Some(Layout::Paddle),
        (true, Some(false)) if torch_file => Some(Layout::Torch),
        _ => None,
    }
}

/// What a mapping did besides renaming.
#[derive(Debug, Default, Clone, Serialize)]
pub struct MapReport {
    /// Tensors transposed (Linear weights between `[out,in]` and `[in,out]`).
    pub transposed: usize,
    /// `num_batches_tracked` buffers dropped (Paddle and Burn have none).
    pub dropped: usize,
    /// `num_batches_tracked` buffers added as 0 (so torch's `strict=True` loads).
    pub added: usize,
}

/// Map every tensor from layout `from` to layout `to`.
///
/// Fails, naming examples, when a tensor is not in the table: nothing is silently left out.
pub fn map(
    tensors: Vec<Tensor>,
    from: Layout,
    to: Layout,
) -> Result<(Vec<Tensor>, MapReport), LayoutError> {
    let mut canon = Vec::with_capacity(tensors.len());
    let mut unknown = Vec::new();
    for t in tensors {
        match parse(&t.name, from) {
            Some(c) => canon.push((c, t)),
            None => unknown.push(t.name),
        }
    }
    if !unknown.is_empty() {
        return Err(LayoutError::Unknown {
            layout: from,
            count: unknown.len(),
            examples: unknown
                .iter()
                .take(3)
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let mut ctx = Context::default();
    let mut protos = std::collections::BTreeSet::new();
    for (c, _) in &canon {
        let r = &RULES[c.rule];
        ctx.has_head |= !r.backbone;
        match (r.pick, r.kind, r.backbone) {
            (Pick::Proto, _, _) => {
                protos.insert(c.caps[1].unwrap_or(0));
            }
            (Pick::First, Kind::Bn, false) => ctx.head_bn = true,
            (Pick::First, Kind::Linear, false) if r.torch[0] == "projection_head.0" => {
                ctx.head_hidden = true
            }
            _ => {}
        }
    }
    ctx.protos = protos.len();

    let mut report = MapReport::default();
    let mut out: Vec<Tensor> = Vec::with_capacity(canon.len());
    let mut seen = HashMap::new();
    let mut bns_with_tracked = std::collections::HashSet::new();
    for (c, t) in canon {
        let rule = &RULES[c.rule];
        let p = params(rule.kind)
            .iter()
            .find(|p| p.0 == c.param)
            .expect("param from the table");
        let leaf = param_name(p, to);
        let module = render(rule, &c.caps, to, &ctx);
        if c.param == Param::Tracked {
            bns_with_tracked.insert(module.clone());
        }
        if leaf.is_empty() {
            report.dropped += 1;
            continue;
        }
        let name = format!("{module}.{leaf}");
        let mut t = t.renamed(name.clone());
        let linear = matches!(rule.kind, Kind::Linear | Kind::Proto) && c.param == Param::Weight;
        if linear && (from == Layout::Torch) != (to == Layout::Torch) && t.shape.len() == 2 {
            t = t.transposed();
            report.transposed += 1;
        }
        if seen.insert(name.clone(), ()).is_some() {
            return Err(LayoutError::Duplicate(name));
        }
        out.push(t);
    }
    if to == Layout::Torch && from != Layout::Torch {
        // Every BN gets its num_batches_tracked, after its running_var.
        let mut with = Vec::with_capacity(out.len() * 5 / 4);
        for t in out {
            let bn = t.name.strip_suffix(".running_var").map(str::to_string);
            with.push(t);
            if let Some(m) = bn {
                if !bns_with_tracked.contains(&m) {
                    with.push(
                        Tensor::from_vec(
                            format!("{m}.num_batches_tracked"),
                            DType::I64,
                            vec![],
                            vec![0; 8],
                        )
                        .expect("one i64 is 8 bytes"),
                    );
                    report.added += 1;
                }
            }
        }
        out = with;
    }
    Ok((out, report))
}

fn render(rule: &Rule, caps: &Captures, to: Layout, ctx: &Context) -> String {
    let names = rule.names(to);
    let idx = match rule.pick {
        Pick::First => 0,
        Pick::ProjOut => {
            if !ctx.head_hidden {
                2
            } else if ctx.head_bn {
                0
            } else {
                1
            }
        }
        Pick::Proto => usize::from(ctx.protos > 1),
    };
    let module = render_pattern(names[idx.min(names.len() - 1)], caps);
    if rule.backbone && ctx.has_head && to != Layout::Torch {
        format!("backbone.{module}")
    } else {
        module
    }
}

/// Whether a tensor name (in `layout`) belongs to the backbone.
pub fn is_backbone(name: &str, layout: Layout) -> Option<bool> {
    parse(name, layout).map(|c| RULES[c.rule].backbone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_classifier_is_told_by_its_file() {
        let fair = ["linear.weight", "linear.bias"];
        assert_eq!(lone_classifier(fair, true), Some(Layout::Torch));
        assert_eq!(lone_classifier(fair, false), None);
        assert_eq!(
            lone_classifier(["fc.weight", "fc.bias"], true),
            Some(Layout::Torch)
        );
        let passl = ["head.fc_cls.weight", "head.fc_cls.bias"];
        assert_eq!(lone_classifier(passl, false), Some(Layout::Paddle));
        assert_eq!(
            lone_classifier(["linear.weight", "conv1.weight"], true),
            None
        );
        assert_eq!(
            lone_classifier(["linear.weight", "head.fc_cls.bias"], true),
            None
        );
        assert_eq!(lone_classifier(std::iter::empty(), true), None);
        // Mapped like any other tensor: transposed between torch's [out, in] and [in, out].
        let t = Tensor::from_vec("linear.weight", DType::F32, vec![3, 2], vec![0; 24]).unwrap();
        let (out, r) = map(vec![t], Layout::Torch, Layout::Paddle).unwrap();
        assert_eq!(
            (out[0].name.as_str(), out[0].shape.as_slice()),
            ("head.fc_cls.weight", &[2usize, 3][..])
        );
        assert_eq!(r.transposed, 1);
    }

    fn t(name: &str, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(name, DType::F32, shape.to_vec(), vec![0; n * 4]).unwrap()
    }

    fn names(v: &[Tensor]) -> Vec<&str> {
        v.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn torch_to_paddle_and_burn() {
        let src = vec![
            t("conv1.weight", &[4, 3, 7, 7]),
            t("layer1.0.downsample.1.running_var", &[4]),
            t("projection_head.0.weight", &[32, 128]),
            t("projection_head.1.weight", &[32]),
            t("projection_head.3.weight", &[16, 32]),
            t("prototypes.weight", &[30, 16]),
        ];
        let (p, r) = map(src.clone(), Layout::Torch, Layout::Paddle).unwrap();
        assert_eq!(
            names(&p),
            [
                "backbone.conv1.weight",
                "backbone.layer1.0.downsample.1._variance",
                "neck.projection_neck.0.weight",
                "neck.projection_neck.1.weight",
                "neck.projection_neck.3.weight",
                "head.prototypes.weight"
            ]
        );
        assert_eq!(p[5].shape, vec![16, 30]);
        assert_eq!(r.transposed, 3);
        let (b, _) = map(src, Layout::Torch, Layout::Burn).unwrap();
        assert_eq!(
            b[1].name,
            "backbone.layer1.blocks.0.downsample.bn.running_var"
        );
        assert_eq!(b[3].name, "projection_head.bn.gamma");
        assert_eq!(b[4].name, "projection_head.out.weight");
        assert_eq!(b[5].name, "prototypes.heads.0.weight");
        // Back to torch: BN gains num_batches_tracked.
        let (back, r) = map(b, Layout::Burn, Layout::Torch).unwrap();
        assert!(back
            .iter()
            .any(|t| t.name == "layer1.0.downsample.1.num_batches_tracked"));
        assert_eq!(r.added, 1);
        assert_eq!(
            back.iter()
                .find(|t| t.name == "prototypes.weight")
                .unwrap()
                .shape,
            vec![30, 16]
        );
    }

    #[test]
    fn no_bn_head_and_multi_prototypes() {
        let src = vec![
            t("projection_head.0.weight", &[32, 128]),
            t("projection_head.2.weight", &[16, 32]),
            t("prototypes.prototypes0.weight", &[30, 16]),
            t("prototypes.prototypes1.weight", &[15, 16]),
        ];
        let (b, _) = map(src, Layout::Torch, Layout::Burn).unwrap();
        assert_eq!(names(&b)[1], "projection_head.out.weight");
        assert_eq!(names(&b)[3], "prototypes.heads.1.weight");
        let (p, _) = map(b, Layout::Burn, Layout::Paddle).unwrap();
        assert_eq!(names(&p)[1], "neck.projection_neck.2.weight");
        assert_eq!(names(&p)[3], "head.prototypes.prototypes1.weight");
    }

    #[test]
    fn unknown_names_are_errors() {
        let e = map(
            vec![t("encoder.weight", &[2])],
            Layout::Torch,
            Layout::Paddle,
        )
        .unwrap_err();
        assert!(matches!(e, LayoutError::Unknown { count: 1, .. }));
    }

    #[test]
    fn detection() {
        assert_eq!(detect(["bn1._mean"]).unwrap(), Layout::Paddle);
        assert_eq!(detect(["bn1.gamma"]).unwrap(), Layout::Burn);
        assert_eq!(detect(["bn1.running_mean"]).unwrap(), Layout::Torch);
        assert!(detect(["foo"]).is_err());
    }
}
