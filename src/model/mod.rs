//! The SwAV model in Burn: [`resnet`] (backbone), [`swav`] (projection head, prototypes) and
//! [`load`] (weights from any checkpoint format, through the layout table).

pub mod batchnorm;
pub mod conv;
mod kernels;
pub mod load;
pub mod open;
pub mod pool;
pub mod record;
pub mod resnet;
pub mod swav;

pub use open::open;

/// The CPU backend used by default and in tests ([`crate::backend::Cpu`]).
pub type CpuBackend = crate::backend::Cpu;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Call `f(name, shape, values)` for every float parameter and BatchNorm statistic of
/// `module`, in visiting order, with its dotted Burn-layout name and its values as f32; an
/// error names the first parameter whose values could not be read.
pub fn for_each_param<B: Backend, M: Module<B>>(
    module: &M,
    f: impl FnMut(String, Vec<usize>, Vec<f32>),
) -> Result<(), String> {
    struct Visit<F> {
        path: Vec<String>,
        f: F,
        error: Option<String>,
    }
    impl<B: Backend, F: FnMut(String, Vec<usize>, Vec<f32>)> ModuleVisitor<B> for Visit<F> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let t = param.val();
            let shape = t.dims().to_vec();
            let name = self.path.join(".");
            match t.into_data().convert::<f32>().to_vec::<f32>() {
                Ok(values) => (self.f)(name, shape, values),
                Err(e) => {
                    self.error.get_or_insert(format!(
                        "parameter {name}: its values are unreadable ({e:?})"
                    ));
                }
            }
        }
    }
    let mut v = Visit {
        path: Vec::new(),
        f,
        error: None,
    };
    module.visit(&mut v);
    v.error.map_or(Ok(()), Err)
}
