//! Health checks beyond the peers': non-finite values stop the run with the iteration and the
//! offending tensor; a loss that sits at ln(K) (collapse: every image predicts the uniform
//! distribution over the K prototypes — facebookresearch/swav's most reported problem) and a
//! loss that climbs once the queue starts are reported with the fixes its README lists.

use burn::module::Module;
use burn::tensor::backend::Backend;

/// A warning about the run's health.
#[derive(Debug, Clone, PartialEq)]
pub enum Warning {
    /// The epoch's mean loss is within 1% of ln(K).
    Collapse { epoch: usize, loss: f64, ln_k: f64 },
    /// The first epoch with the queue has a higher loss than the epoch before it.
    QueueLossClimbs {
        epoch: usize,
        before: f64,
        after: f64,
    },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::Collapse { epoch, loss, ln_k } => write!(
                f,
                "epoch {epoch}: loss {loss:.4} sits at ln(K) = {ln_k:.4}: the assignments look collapsed \
                 (uniform predictions); try a smaller model.head.epsilon (e.g. 0.03), a longer \
                 optimizer_config.freeze_prototypes_iters, or a later/smaller queue \
                 (model.head.epoch_queue_starts, model.head.queue_length)"
            ),
            Warning::QueueLossClimbs {
                epoch,
                before,
                after,
            } => write!(
                f,
                "epoch {epoch}: the loss climbed from {before:.4} to {after:.4} once the queue started; \
                 if it keeps climbing, start the queue later (model.head.epoch_queue_starts) or \
                 make it smaller (model.head.queue_length)"
            ),
        }
    }
}

/// Collapse: an epoch (after the first) whose mean loss is within 1% of ln(K).
pub fn collapse(epoch: usize, loss: f64, prototypes: usize) -> Option<Warning> {
    let ln_k = (prototypes as f64).ln();
    (epoch > 0 && (loss - ln_k).abs() <= 0.01 * ln_k).then_some(Warning::Collapse {
        epoch,
        loss,
        ln_k,
    })
}

/// The queue's first epoch made the loss climb by more than 5%.
pub fn queue_climb(epoch: usize, queue_starts: usize, before: f64, after: f64) -> Option<Warning> {
    (epoch == queue_starts && after > before * 1.05).then_some(Warning::QueueLossClimbs {
        epoch,
        before,
        after,
    })
}

/// The warnings due after `epoch` (mean loss `loss`; `before`: the previous epoch's).
pub fn after_epoch(
    cfg: &super::config::TrainConfig,
    epoch: usize,
    before: Option<f64>,
    loss: f64,
) -> Vec<Warning> {
    let h = &cfg.model.head;
    let mut w: Vec<Warning> = collapse(epoch, loss, h.num_prototypes)
        .into_iter()
        .collect();
    if let (Some(b), true) = (before, h.queue_length > 0) {
        w.extend(queue_climb(epoch, h.epoch_queue_starts, b, loss));
    }
    w
}

/// The first parameter (by name) holding a NaN or an infinity, and the count of such values;
/// an error names a parameter whose values could not be read.
pub fn first_non_finite<B: Backend, M: Module<B>>(
    module: &M,
) -> Result<Option<(String, usize)>, String> {
    let mut found = None;
    crate::model::for_each_param(module, |name, _, values| {
        let bad = values.iter().filter(|x| !x.is_finite()).count();
        if found.is_none() && bad > 0 {
            found = Some((name, bad));
        }
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_and_queue_rules() {
        assert!(collapse(3, 8.0, 3000).is_some());
        assert!(collapse(0, 8.0, 3000).is_none());
        assert!(collapse(3, 6.5, 3000).is_none());
        assert!(queue_climb(15, 15, 4.0, 4.5).is_some());
        assert!(queue_climb(15, 15, 4.0, 4.1).is_none());
        assert!(queue_climb(16, 15, 4.0, 4.5).is_none());
        let w = collapse(3, 8.0, 3000).unwrap().to_string();
        assert!(w.contains("epsilon") && w.contains("freeze_prototypes_iters"));
    }
}
