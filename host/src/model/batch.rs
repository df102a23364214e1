//! Batching: one collector task per batching tier gathers the model calls
//! of asynchronous requests and sends them as one `/completions` call,
//! sharing its usage out in proportion.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Reply, Tier, openai, post_json, snippet};
use crate::manifest::BatchSpec;

/// One call waiting in a batch, with where its answer goes:
/// `(text, model, prompt tokens, answer tokens)`.
pub(super) struct BatchItem {
    pub(super) prompt: String,
    pub(super) max_tokens: Option<u32>,
    pub(super) reply: oneshot::Sender<Result<(String, String, u64, u64), String>>,
}

/// The chat messages as one completion prompt.
pub(super) fn prompt_of(messages: &[(String, String)]) -> String {
    let mut prompt = String::new();
    for (role, content) in messages {
        prompt.push_str(&format!("{role}: {content}\n\n"));
    }
    prompt.push_str("assistant:");
    prompt
}

/// Gather calls for one tier: a batch is sent when it is full or when its
/// first call has waited `max_wait_ms`.
pub(super) async fn collect_batches(
    client: reqwest::Client,
    tier: Tier,
    batch: BatchSpec,
    mut calls: mpsc::Receiver<BatchItem>,
    tasks: tokio_util::task::TaskTracker,
) {
    while let Some(first) = calls.recv().await {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(batch.max_wait_ms);
        let mut items = vec![first];
        while items.len() < batch.max_size as usize {
            match tokio::time::timeout_at(deadline, calls.recv()).await {
                Ok(Some(item)) => items.push(item),
                _ => break,
            }
        }
        let client = client.clone();
        let tier = tier.clone();
        // Sent while the next batch gathers, as one of the host's tasks.
        tasks.spawn(async move {
            let prompts: Vec<&str> = items.iter().map(|i| i.prompt.as_str()).collect();
            let max_tokens = items.iter().filter_map(|i| i.max_tokens).max();
            match send_batch(&client, &tier, &prompts, max_tokens).await {
                Ok(answers) => {
                    for (item, answer) in items.into_iter().zip(answers) {
                        let _ = item.reply.send(Ok(answer));
                    }
                }
                Err(error) => {
                    for item in items {
                        let _ = item.reply.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// One `POST /completions` with a list of prompts. The provider reports
/// usage for the whole batch; each answer is charged its share, in
/// proportion to the length of its prompt (input) and of its text (output).
pub(super) async fn send_batch(
    client: &reqwest::Client,
    tier: &Tier,
    prompts: &[&str],
    max_tokens: Option<u32>,
) -> Result<Vec<(String, String, u64, u64)>, String> {
    let body = openai::CompletionsRequest {
        model: &tier.spec.model,
        prompt: prompts,
        max_tokens,
    };
    let timeout = Duration::from_millis(tier.spec.timeout_ms);
    let Reply { status, text, .. } = post_json(
        client,
        &tier.completions_url,
        tier.api_key.as_deref(),
        timeout,
        &body,
    )
    .await
    .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "the provider answered {status}: {}",
            snippet(&text)
        ));
    }
    let answer: openai::CompletionsResponse = serde_json::from_str(&text)
        .map_err(|_| format!("not a completions answer: {}", snippet(&text)))?;
    let model = answer.model.unwrap_or_else(|| tier.spec.model.clone());
    let mut texts = vec![None; prompts.len()];
    for choice in answer.choices {
        if let Some(slot) = texts.get_mut(choice.index) {
            *slot = Some(choice.text);
        }
    }
    let texts: Vec<String> = texts
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| "the provider did not answer every prompt of the batch".to_owned())?;
    let inputs = shares(
        answer.usage.prompt_tokens,
        prompts.iter().map(|p| p.len() as u64),
    );
    let outputs = shares(
        answer.usage.completion_tokens,
        texts.iter().map(|t| t.len() as u64),
    );
    Ok(texts
        .into_iter()
        .zip(inputs.into_iter().zip(outputs))
        .map(|(text, (input, output))| (text, model.clone(), input, output))
        .collect())
}

/// `total` split in proportion to `weights`, in whole units that add up to
/// `total` exactly (the units left by rounding down go to the largest
/// remainders).
pub(super) fn shares(total: u64, weights: impl Iterator<Item = u64>) -> Vec<u64> {
    let weights: Vec<u128> = weights.map(|w| u128::from(w.max(1))).collect();
    let sum: u128 = weights.iter().sum();
    if sum == 0 {
        return Vec::new();
    }
    let total = u128::from(total);
    let mut parts: Vec<(usize, u128, u128)> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| (i, total * w / sum, total * w % sum))
        .collect();
    let mut left = total - parts.iter().map(|p| p.1).sum::<u128>();
    let mut by_remainder: Vec<usize> = (0..parts.len()).collect();
    by_remainder.sort_by(|a, b| parts[*b].2.cmp(&parts[*a].2).then(a.cmp(b)));
    for i in by_remainder {
        if left == 0 {
            break;
        }
        parts[i].1 += 1;
        left -= 1;
    }
    parts
        .into_iter()
        .map(|(_, share, _)| share as u64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn batch_usage_is_shared_in_proportion_and_adds_up() {
        assert_eq!(shares(10, [1, 1].into_iter()), vec![5, 5]);
        assert_eq!(shares(10, [1, 3].into_iter()), vec![3, 7]);
        let split = shares(100, [3, 3, 3].into_iter());
        assert_eq!(split.iter().sum::<u64>(), 100);
        assert_eq!(split, vec![34, 33, 33]);
        // Empty texts still get a (small) share; nothing is lost or made up.
        assert_eq!(shares(7, [0, 0, 5].into_iter()).iter().sum::<u64>(), 7);
        assert_eq!(shares(0, [4, 2].into_iter()), vec![0, 0]);
        assert!(shares(5, std::iter::empty()).is_empty());
    }
}
