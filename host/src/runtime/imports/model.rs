//! `strata:pipeline/model`: completions by tier (see [`crate::model`]).

use crate::model::{CompletionRequest, ModelError};
use crate::runtime::StageState;
use crate::runtime::bindings::v0_2::strata::pipeline::model::{
    Completion, CompletionRequest as WitRequest, Host, ModelError as WitError,
};

impl Host for StageState {
    async fn complete(&mut self, request: WitRequest) -> Result<Completion, WitError> {
        let Some(models) = self.services.models.clone() else {
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
        let (result, calls) = models.complete(&request, self.services.batch).await;
        self.effects.model_calls.extend(calls);
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
