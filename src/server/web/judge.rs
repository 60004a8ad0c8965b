//! One item through the served model against a policy: the prompt goes to
//! the engine, the tokens come back and are read as a verdict. Try, the
//! evals and `/v1/classify` all use this; Try also wants the reasoning as it
//! is written.

use tokio::sync::mpsc::UnboundedReceiver;

use crate::classify::input::Item;
use crate::classify::policy::Policy;
use crate::classify::run::{Classification, ClassifyOptions, ItemRun, Judge};
use crate::classify::verdict::Keywords;
use crate::engine::driver::Event;
use crate::engine::sampler::SamplerOptions;
use crate::harmony::{Effort, StreamParser};
use crate::server::error::ApiError;
use crate::server::turn::past;
use crate::server::{AppState, Generate};

/// The classification options of a playground request, with the server's
/// defaults where it says nothing (as `/v1/classify` has them).
pub fn options(
    state: &AppState,
    policy: &Policy,
    effort: Option<Effort>,
    max_tokens: Option<usize>,
) -> ClassifyOptions {
    ClassifyOptions {
        effort: effort.or(policy.effort.is_none().then_some(state.options().effort)),
        date: None,
        max_tokens: max_tokens.unwrap_or(state.options().max_tokens),
        sampler: SamplerOptions::default(),
        prefill_step: state.options().prefill_step,
        keywords: Keywords::default(),
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

/// An item the engine has accepted; dropping it cancels its generation.
pub struct Pending<'t> {
    events: UnboundedReceiver<Event>,
    run: ItemRun<'t>,
}

/// Hands `item` to the engine. `group`: the request (a Try, an eval) it
/// belongs to, so the engine shares its places fairly between requests.
pub fn submit<'t>(
    state: &AppState,
    judge: &Judge<'t>,
    item: &Item,
    group: u64,
) -> Result<Pending<'t>, ApiError> {
    let prompt = judge.prompt(&item.content).map_err(internal)?;
    let max_tokens = Some(judge.options().max_tokens);
    submit_prompt(state, judge, item, prompt, max_tokens, group)
}

/// As [`submit`], with the prompt and the tokens it shares with every item
/// already rendered. `max_tokens` None: the server's default, within the
/// context.
pub fn submit_prompt<'t>(
    state: &AppState,
    judge: &Judge<'t>,
    item: &Item,
    (prompt, shared): (Vec<u32>, usize),
    max_tokens: Option<usize>,
    group: u64,
) -> Result<Pending<'t>, ApiError> {
    let prompt_tokens = prompt.len();
    let events = state.generate_guided(
        Generate {
            prompt,
            cache_prefix: shared,
            max_tokens,
            max_tokens_param: "max_tokens",
            sampler: SamplerOptions::default(),
            top_logprobs: None,
            watch: judge.digits().to_vec(),
            group: Some(group),
        },
        judge.guide(),
    )?;
    let run = judge.start(item, prompt_tokens, 0).map_err(internal)?;
    Ok(Pending { events, run })
}

impl Pending<'_> {
    /// Reads the item's output to its end. `reasoning` gets each piece of
    /// text added to an analysis message, as it comes.
    pub async fn finish(
        mut self,
        state: &AppState,
        judge: &Judge<'_>,
        mut reasoning: impl FnMut(&str),
    ) -> Result<Classification, ApiError> {
        // A second reader of the same tokens: the verdict's parser keeps its
        // messages to itself until the end.
        let mut parser = StreamParser::new(state.tokenizer()).map_err(internal)?;
        let mut deadline = state.deadline();
        loop {
            let event = tokio::select! {
                event = self.events.recv() => event,
                () = past(&mut deadline) => return Err(ApiError::cut()),
            };
            match event {
                Some(Event::Started { cached_tokens }) => self.run.set_cached_tokens(cached_tokens),
                Some(Event::Token(token)) => {
                    self.run.push(judge, &token);
                    if let Some(delta) = parser.push(token.id) {
                        let analysis = parser
                            .message(delta.index)
                            .is_some_and(|m| m.channel.as_deref() == Some("analysis"));
                        if analysis {
                            reasoning(&delta.text);
                        }
                    }
                }
                Some(Event::Finished(_)) => break,
                Some(Event::Failed(message)) => {
                    return Err(ApiError::internal(format!("generation failed: {message}")))
                }
                None => {
                    return Err(ApiError::internal(
                        "the engine stopped before the classification ended",
                    ))
                }
            }
        }
        self.run.finish(judge).map_err(internal)
    }
}
