//! Offline token counting with OpenAI's encodings (`o200k_base`, `cl100k_base`), chosen by
//! model, for estimating what a request will count against tokens per minute.

use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
use tiktoken_rs::CoreBPE;

/// The encodings fleetgate counts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl Encoding {
    /// The encoding of a model; models unknown to the table (new names, fine-tunes,
    /// deployments) use `o200k_base`, the encoding of every current OpenAI model family.
    pub fn for_model(model: &str) -> Self {
        // A fine-tune is named `ft:<base model>:<org>:<suffix>:<id>`.
        let base = match model.strip_prefix("ft:") {
            Some(rest) => rest.split(':').next().unwrap_or(rest),
            None => model,
        };
        match get_tokenizer(base) {
            Some(Tokenizer::Cl100kBase) => Encoding::Cl100kBase,
            _ => Encoding::O200kBase,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Tokens in `text` (special-token text counts as ordinary text, as the API does for
    /// user content).
    pub fn count(self, text: &str) -> usize {
        if text.is_empty() {
            return 0;
        }
        self.bpe().count_ordinary(text)
    }

    /// The first `max_tokens` tokens of `text`, and whether anything was cut. A cut that
    /// falls inside a multi-byte character drops that character's partial bytes.
    pub fn truncate(self, text: &str, max_tokens: usize) -> (String, bool) {
        // A token is at least one byte: a text no longer than that many bytes fits.
        if text.len() <= max_tokens {
            return (text.to_owned(), false);
        }
        let bpe = self.bpe();
        let tokens = bpe.encode_ordinary(text);
        if tokens.len() <= max_tokens {
            return (text.to_owned(), false);
        }
        let kept = bpe.decode_bytes(&tokens[..max_tokens]).expect("tokens from encode_ordinary always decode");
        let head = match std::str::from_utf8(&kept) {
            Ok(whole) => whole,
            // The kept tokens are a prefix of `text`'s bytes: only the tail can be partial.
            Err(e) => &text[..e.valid_up_to()],
        };
        (head.to_owned(), true)
    }
}

/// `text` cut to its first `max_tokens` tokens under `model`'s encoding, and whether it was cut.
pub fn truncate_tokens(text: &str, max_tokens: usize, model: &str) -> (String, bool) {
    Encoding::for_model(model).truncate(text, max_tokens)
}

/// Tokens a chat request's messages take: each message's text plus the per-message and
/// reply-priming overhead of the chat format (3 per message, 3 for the reply).
pub fn chat_prompt_tokens<'a>(encoding: Encoding, messages: impl IntoIterator<Item = &'a str>) -> usize {
    let mut total = 3;
    for text in messages {
        total += 3 + encoding.count(text);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_by_model() {
        assert_eq!(Encoding::for_model("gpt-4.1-mini"), Encoding::O200kBase);
        assert_eq!(Encoding::for_model("gpt-4o-2024-08-06"), Encoding::O200kBase);
        assert_eq!(Encoding::for_model("gpt-4"), Encoding::Cl100kBase);
        assert_eq!(Encoding::for_model("text-embedding-3-small"), Encoding::Cl100kBase);
        assert_eq!(Encoding::for_model("ft:gpt-3.5-turbo:acme::abc"), Encoding::Cl100kBase);
        assert_eq!(Encoding::for_model("some-new-model"), Encoding::O200kBase);
    }

    #[test]
    fn counts_known_strings() {
        // Reference counts from OpenAI's tiktoken.
        assert_eq!(Encoding::Cl100kBase.count("hello world"), 2);
        assert_eq!(Encoding::O200kBase.count("hello world"), 2);
        assert_eq!(Encoding::Cl100kBase.count("tiktoken is great!"), 6);
        assert_eq!(Encoding::O200kBase.count(""), 0);
        assert_eq!(chat_prompt_tokens(Encoding::O200kBase, ["hello world"]), 3 + 3 + 2);
    }

    #[test]
    fn truncation_keeps_the_first_tokens() {
        assert_eq!(truncate_tokens("hello world", 1, "gpt-4o"), ("hello".to_owned(), true));
        assert_eq!(truncate_tokens("hello world", 2, "gpt-4o"), ("hello world".to_owned(), false));
        assert_eq!(truncate_tokens("hello world", 0, "gpt-4o"), (String::new(), true));
        assert_eq!(truncate_tokens("", 0, "gpt-4o"), (String::new(), false));
        let text = "tiktoken is great! ".repeat(50);
        for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
            let (head, cut) = encoding.truncate(&text, 17);
            assert!(cut);
            assert_eq!(encoding.count(&head), 17);
            assert!(text.starts_with(&head));
        }
    }

    #[test]
    fn truncation_never_splits_a_character() {
        // Rare CJK characters and emoji take several tokens each in cl100k_base, so most
        // cuts fall inside a character.
        let text = "𠜎𠜱𠝹𠱓 👩‍👩‍👧‍👦 ünïcödé 龘龘龘 🦀🦀";
        let encoding = Encoding::Cl100kBase;
        let total = encoding.count(text);
        let (mut previous, mut dropped_partial) = (String::new(), false);
        for max in 0..=total {
            let (head, cut) = encoding.truncate(text, max);
            assert_eq!(cut, max < total, "max {max}");
            assert!(text.starts_with(&head), "max {max}: {head:?}");
            let kept = encoding.count(&head);
            assert!(kept <= max, "max {max}: {head:?} is {kept} tokens");
            dropped_partial |= kept < max;
            assert!(head.len() >= previous.len());
            previous = head;
        }
        assert_eq!(previous, text);
        assert!(dropped_partial, "no cut fell inside a character: the test text does not test that");
    }
}
