//! Token counting for Python: `count_tokens`, `chat_prompt_tokens`, `encoding_for_model`, and
//! `truncate_tokens`.

use fleetgate_core::tokens::{chat_prompt_tokens as chat_tokens, Encoding};
use pyo3::prelude::*;

/// Texts longer than this are counted with the GIL released.
const DETACH_ABOVE: usize = 16 * 1024;

/// The encoding OpenAI uses for `model` ("o200k_base" or "cl100k_base").
#[pyfunction]
pub fn encoding_for_model(model: &str) -> &'static str {
    Encoding::for_model(model).name()
}

/// Tokens in `text` under `model`'s encoding.
#[pyfunction]
pub fn count_tokens(py: Python<'_>, model: &str, text: &str) -> usize {
    let encoding = Encoding::for_model(model);
    if text.len() > DETACH_ABOVE {
        let owned = text.to_owned();
        return py.detach(move || encoding.count(&owned));
    }
    encoding.count(text)
}

/// Tokens of a chat prompt: each message's text plus the chat format's overhead.
#[pyfunction]
pub fn chat_prompt_tokens(py: Python<'_>, model: &str, messages: Vec<String>) -> usize {
    let encoding = Encoding::for_model(model);
    let total: usize = messages.iter().map(String::len).sum();
    if total > DETACH_ABOVE {
        return py.detach(move || chat_tokens(encoding, messages.iter().map(String::as_str)));
    }
    chat_tokens(encoding, messages.iter().map(String::as_str))
}

/// `text` cut to its first `max_tokens` tokens under `model`'s encoding (never inside a
/// character), and whether anything was cut.
#[pyfunction]
pub fn truncate_tokens(py: Python<'_>, text: &str, max_tokens: usize, model: &str) -> (String, bool) {
    let encoding = Encoding::for_model(model);
    if text.len() > DETACH_ABOVE {
        let owned = text.to_owned();
        return py.detach(move || encoding.truncate(&owned, max_tokens));
    }
    encoding.truncate(text, max_tokens)
}
