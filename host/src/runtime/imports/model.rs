//! `strata:pipeline/model`: completions by tier (see [`crate::model`]).

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::model::{CompletionRequest, ModelCall, ModelError, ModelRouter};
use crate::runtime::StageState;
use crate::runtime::bindings::v0_2::strata::pipeline::model::{
    Completion, CompletionRequest as WitRequest, Host, ModelError as WitError,
};
use crate::runtime::bindings::{v0_1, v0_2};

/// The model tiers an invocation may call.
#[derive(Clone, Default)]
pub struct ModelAccess {
    /// The generation's tiers; `None` turns model calls off (golden cases,
    /// replays).
    pub router: Option<Arc<ModelRouter>>,
    /// Calls may wait to join a batch (asynchronous requests only).
    pub batch: bool,
}

/// What `model` needs of one invocation.
#[derive(Default)]
pub(crate) struct ModelCtx {
    access: ModelAccess,
    /// Every call made, answered or not: each was paid for or tried.
    calls: Vec<ModelCall>,
}

impl ModelCtx {
    /// Start an invocation with its tiers.
    pub(crate) fn restart(&mut self, access: &ModelAccess) {
        self.access = access.clone();
        self.calls.clear();
    }

    /// The calls the invocation made, leaving none.
    pub(crate) fn take_calls(&mut self) -> Vec<ModelCall> {
        std::mem::take(&mut self.calls)
    }
}

/// Link `model` of every contract version, served from
/// [`StageState::model`].
pub(crate) fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
    v0_2::strata::pipeline::model::add_to_linker::<_, HasSelf<ModelCtx>>(linker, |s| &mut s.model)?;
    v0_1::strata::pipeline::model::add_to_linker::<_, HasSelf<ModelCtx>>(linker, |s| &mut s.model)
}

impl Host for ModelCtx {
    async fn complete(&mut self, request: WitRequest) -> Result<Completion, WitError> {
        let Some(models) = self.access.router.clone() else {
            return Err(WitError::Unavailable(
                "model calls are turned off here (golden cases and replays run without them)"
                    .to_owned(),
            ));
        };
        let request = CompletionRequest {
            tier: request.tier,
            messages: request
                .messages
                .into_iter()
                .map(|m| (m.role, m.content))
                .collect(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        let (result, calls) = models.complete(&request, self.access.batch).await;
        self.calls.extend(calls);
        match result {
            Ok(answer) => Ok(Completion {
                text: answer.text,
                tier: answer.tier,
                model: answer.model,
                input_tokens: answer.input_tokens,
                output_tokens: answer.output_tokens,
                cost_usd: answer.cost_usd,
            }),
            Err(ModelError::UnknownTier(tier)) => Err(WitError::UnknownTier(tier)),
            Err(ModelError::Unavailable(why)) => Err(WitError::Unavailable(why)),
            Err(ModelError::Rejected(why)) => Err(WitError::Rejected(why)),
        }
    }
}
