//! Checking and sizing Batch API input lines in bulk, before anything is uploaded.
//!
//! A [`LineScanner`] reads an input file block by block (each block ends at a line
//! boundary). Every line is parsed and checked on its own, in parallel, against the Batch
//! API's rules (a JSON object, `custom_id` of at most 64 characters, `method` POST, a known
//! `url`, a `body` with a `model` and no `stream`), and sized in the tokens it will count
//! against the model's enqueued-token limit: the prompt counted with the model's encoding or
//! by characters, whichever is larger, plus the most output it may produce. Then, in file
//! order, the rules that span lines: one endpoint and one model per file, unique `custom_id`.
//!
//! A problem names the line's number and what is wrong, never the line's content.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::ops::Range;

use serde_json::{Map, Value};

use crate::tokens::Encoding;

/// The endpoints a batch can target.
pub const ENDPOINTS: [&str; 5] =
    ["/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/completions", "/v1/moderations"];

/// The longest `custom_id` the Batch API accepts.
pub const MAX_CUSTOM_ID: usize = 64;

/// Lines in a block below which one thread checks them all.
const PARALLEL_FROM: usize = 2_048;

/// One line of input, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the file.
    pub number: u64,
    /// Where the line's bytes are in the block (without the line ending).
    pub span: Range<usize>,
    /// What it counts against the enqueued-token limit, or why it cannot be sent.
    pub verdict: Result<Size, String>,
}

/// A request's size in tokens: its prompt, and the most output it may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size {
    pub prompt: u64,
    pub output: u64,
}

impl Size {
    /// What it counts against the enqueued-token limit.
    pub fn total(self) -> u64 {
        self.prompt + self.output
    }
}

/// How big one batch may be: the Batch API's limits, and the share of the model's
/// enqueued-token limit one batch may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    pub lines: u64,
    pub bytes: u64,
    pub tokens: u64,
}

/// Consecutive sendable lines of a block that go to the same chunk: their bytes are
/// `span` of the block (the line endings between them included, the last one not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub chunk: u32,
    pub span: Range<usize>,
    pub lines: u64,
    /// Enqueued tokens: prompts plus the most output.
    pub tokens: u64,
    /// Of which the most output.
    pub output_tokens: u64,
}

/// A line that cannot be sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub number: u64,
    pub reason: String,
}

/// Cuts a file's sendable lines into chunks, in file order, each within [`ChunkLimits`].
#[derive(Debug)]
pub struct Splitter {
    scanner: LineScanner,
    limits: ChunkLimits,
    /// Enqueued tokens per batch by model, for the file's model once it is known
    /// (`limits.tokens` for any other).
    model_tokens: HashMap<String, u64>,
    model_known: bool,
    chunk: u32,
    lines: u64,
    bytes: u64,
    tokens: u64,
}

impl Splitter {
    pub fn new(scanner: LineScanner, limits: ChunkLimits) -> Self {
        Self {
            scanner,
            limits,
            model_tokens: HashMap::new(),
            model_known: false,
            chunk: 0,
            lines: 0,
            bytes: 0,
            tokens: 0,
        }
    }

    /// Enqueued tokens per batch for these models instead of `limits.tokens`.
    pub fn with_model_tokens(mut self, model_tokens: HashMap<String, u64>) -> Self {
        self.model_tokens = model_tokens;
        self
    }

    pub fn scanner(&self) -> &LineScanner {
        &self.scanner
    }

    /// The runs of `block`'s sendable lines and the problems of the others.
    pub fn split(&mut self, block: &[u8]) -> (Vec<Run>, Vec<Problem>) {
        let mut runs: Vec<Run> = Vec::new();
        let mut problems = Vec::new();
        let mut joinable = false; // the last run ends with the line just before this one
        for line in self.scanner.scan(block) {
            let size = match line.verdict {
                Ok(size) => size,
                Err(reason) => {
                    problems.push(Problem { number: line.number, reason });
                    joinable = false;
                    continue;
                }
            };
            if !self.model_known {
                // The first line admitted sets the file's model, and so its token limit.
                self.model_known = true;
                if let Some(limit) = self.scanner.model().and_then(|m| self.model_tokens.get(m)) {
                    self.limits.tokens = *limit;
                }
            }
            let tokens = size.total();
            let bytes = line.span.len() as u64 + 1;
            if bytes > self.limits.bytes {
                let reason = format!("the line is {bytes} bytes, more than a batch may hold ({})", self.limits.bytes);
                problems.push(Problem { number: line.number, reason });
                joinable = false;
                continue;
            }
            if tokens > self.limits.tokens {
                let reason = format!(
                    "the request counts {tokens} tokens, more than a batch of this model may enqueue ({})",
                    self.limits.tokens
                );
                problems.push(Problem { number: line.number, reason });
                joinable = false;
                continue;
            }
            if self.lines > 0
                && (self.lines + 1 > self.limits.lines
                    || self.bytes + bytes > self.limits.bytes
                    || self.tokens + tokens > self.limits.tokens)
            {
                self.chunk += 1;
                (self.lines, self.bytes, self.tokens) = (0, 0, 0);
                joinable = false;
            }
            self.lines += 1;
            self.bytes += bytes;
            self.tokens += tokens;
            match runs.last_mut() {
                Some(run) if joinable && run.chunk == self.chunk => {
                    run.span.end = line.span.end;
                    run.lines += 1;
                    run.tokens += tokens;
                    run.output_tokens += size.output;
                }
                _ => runs.push(Run {
                    chunk: self.chunk,
                    span: line.span.clone(),
                    lines: 1,
                    tokens,
                    output_tokens: size.output,
                }),
            }
            joinable = true;
        }
        (runs, problems)
    }
}

/// What a line is, before the checks that span lines.
struct Parsed {
    custom_id: String,
    url: &'static str,
    model: String,
    size: Size,
}

/// Checks the lines of one input file, block after block.
#[derive(Debug)]
pub struct LineScanner {
    endpoint: Option<String>,
    model: Option<String>,
    default_max_output: u64,
    /// The 128-bit hashes of the ids seen: 16 bytes each, for files of millions of lines
    /// (two ids collide with a chance of about 1 in 10^27 at a billion lines).
    seen: HashSet<u128>,
    next_number: u64,
    threads: usize,
}

impl LineScanner {
    /// `endpoint`: the file's endpoint, or `None` to take the first valid line's.
    /// `default_max_output`: the output assumed for a request that sets no maximum.
    pub fn new(endpoint: Option<&str>, default_max_output: u64) -> Self {
        Self {
            endpoint: endpoint.map(str::to_owned),
            model: None,
            default_max_output,
            seen: HashSet::new(),
            next_number: 1,
            threads: std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        }
    }

    /// The file's endpoint, once known.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// The file's model, once known.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Lines read so far (blank ones included).
    pub fn lines_read(&self) -> u64 {
        self.next_number - 1
    }

    /// Every non-blank line of `block`, in order. `block` holds whole lines: it ends with
    /// a line ending or at the end of the file.
    pub fn scan(&mut self, block: &[u8]) -> Vec<Line> {
        let spans = split_lines(block);
        let first = self.next_number;
        self.next_number += spans.len() as u64;
        let default_max_output = self.default_max_output;
        let check = |span: &Range<usize>| parse(&block[span.clone()], default_max_output);
        let parsed: Vec<Result<Option<Parsed>, String>> = if spans.len() < PARALLEL_FROM || self.threads < 2 {
            spans.iter().map(check).collect()
        } else {
            let per_thread = spans.len().div_ceil(self.threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = spans
                    .chunks(per_thread)
                    .map(|part| s.spawn(move || part.iter().map(check).collect::<Vec<_>>()))
                    .collect();
                handles.into_iter().flat_map(|h| h.join().expect("a line check never panics")).collect()
            })
        };
        let mut lines = Vec::with_capacity(spans.len());
        for (offset, (span, outcome)) in spans.into_iter().zip(parsed).enumerate() {
            let number = first + offset as u64;
            let verdict = match outcome {
                Ok(None) => continue, // blank
                Ok(Some(line)) => self.admit(line),
                Err(problem) => Err(problem),
            };
            lines.push(Line { number, span, verdict });
        }
        lines
    }

    /// The checks that span lines, in file order; a line that passes them is admitted.
    fn admit(&mut self, line: Parsed) -> Result<Size, String> {
        match &self.endpoint {
            Some(endpoint) if endpoint.as_str() != line.url => {
                return Err(format!("url must be {endpoint}, the file's endpoint (one endpoint per batch)"))
            }
            Some(_) => {}
            None => self.endpoint = Some(line.url.to_owned()),
        }
        match &self.model {
            Some(model) if *model != line.model => {
                return Err(format!(
                    "model {:?} differs from the file's model {model:?} (one model per batch)",
                    line.model
                ))
            }
            Some(_) => {}
            None => self.model = Some(line.model),
        }
        if !self.seen.insert(xxhash_rust::xxh3::xxh3_128(line.custom_id.as_bytes())) {
            return Err(format!("custom_id {:?} appears more than once", line.custom_id));
        }
        Ok(line.size)
    }
}

/// The lines of `block`, without their endings (`\n` or `\r\n`).
fn split_lines(block: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::with_capacity(block.len() / 256 + 1);
    let mut start = 0;
    while start < block.len() {
        let end = block[start..].iter().position(|&b| b == b'\n').map_or(block.len(), |i| start + i);
        let trimmed = if end > start && block[end - 1] == b'\r' { end - 1 } else { end };
        spans.push(start..trimmed);
        start = end + 1;
    }
    spans
}

/// One line on its own: `Ok(None)` when blank.
fn parse(raw: &[u8], default_max_output: u64) -> Result<Option<Parsed>, String> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let text = std::str::from_utf8(raw).map_err(|_| "not valid UTF-8".to_owned())?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({})", json_problem(&e)))?;
    let Value::Object(item) = value else {
        return Err("a line must be a JSON object".to_owned());
    };
    let custom_id = match item.get("custom_id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => return Err("missing a string custom_id".to_owned()),
    };
    if custom_id.chars().count() > MAX_CUSTOM_ID {
        return Err(format!("custom_id is longer than {MAX_CUSTOM_ID} characters"));
    }
    if item.get("method").and_then(Value::as_str) != Some("POST") {
        return Err("method must be \"POST\"".to_owned());
    }
    let url = match item.get("url").and_then(Value::as_str).and_then(|u| ENDPOINTS.iter().find(|e| **e == u)) {
        Some(url) => *url,
        // Not echoed: the line's number finds it.
        _ => return Err(format!("url must be one of {}", ENDPOINTS.join(", "))),
    };
    let Some(Value::Object(body)) = item.get("body") else {
        return Err("body must be a JSON object".to_owned());
    };
    let model = match body.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model,
        _ => return Err("body has no model".to_owned()),
    };
    if body.get("stream").is_some_and(|s| s != &Value::Bool(false) && s != &Value::Null) {
        return Err("streaming requests cannot be batched (remove body.stream)".to_owned());
    }
    let size = request_size(url, model, body, default_max_output);
    Ok(Some(Parsed { custom_id: custom_id.clone(), url, model: model.clone(), size }))
}

fn json_problem(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Eof => "cut off",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected value",
        serde_json::error::Category::Io => "unreadable",
    };
    format!("{what} at column {}", e.column())
}

/// What a request counts against the enqueued-token limit: the prompt (the larger of the
/// encoding's count and OpenAI's four-characters-per-token estimate) plus its maximum output.
fn request_size(url: &str, model: &str, body: &Map<String, Value>, default_max_output: u64) -> Size {
    let encoding = Encoding::for_model(model);
    let max_output = |keys: &[&str]| {
        keys.iter().find_map(|k| body.get(*k).and_then(Value::as_u64)).filter(|n| *n > 0).unwrap_or(default_max_output)
    };
    match url {
        "/v1/chat/completions" => {
            let messages: Vec<String> = body
                .get("messages")
                .and_then(Value::as_array)
                .map(|ms| ms.iter().filter(|m| m.is_object()).map(|m| text_of(m.get("content"))).collect())
                .unwrap_or_default();
            // As `tokens::chat_prompt_tokens`: 3 per message and 3 for the reply.
            let encoded = 3 + messages.iter().map(|m| 3 + counted(encoding, m)).sum::<u64>();
            let by_chars = messages.iter().map(|m| chars_tokens(m)).sum::<u64>() + 3 * messages.len() as u64;
            Size { prompt: encoded.max(by_chars), output: max_output(&["max_completion_tokens", "max_tokens"]) }
        }
        "/v1/responses" => {
            let mut parts = vec![text_of(body.get("instructions"))];
            match body.get("input") {
                Some(Value::String(s)) => parts.push(s.clone()),
                Some(Value::Array(items)) => {
                    parts.extend(items.iter().filter(|i| i.is_object()).map(|i| text_of(i.get("content"))))
                }
                _ => {}
            }
            parts.retain(|p| !p.is_empty());
            let prompt = parts.join("\n");
            Size {
                prompt: counted(encoding, &prompt).max(chars_tokens(&prompt)),
                output: max_output(&["max_output_tokens"]),
            }
        }
        "/v1/completions" => {
            Size { prompt: inputs_tokens(encoding, body.get("prompt")), output: max_output(&["max_tokens"]) }
        }
        _ => Size { prompt: inputs_tokens(encoding, body.get("input")), output: 0 },
    }
}

/// A message's text: a string, or the text of its parts.
fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n")
        }
        _ => String::new(),
    }
}

/// Tokens of a string, a list of strings, or (already tokenized) lists of token ids.
fn inputs_tokens(encoding: Encoding, input: Option<&Value>) -> u64 {
    let one = |v: &Value| match v {
        Value::String(s) => counted(encoding, s).max(chars_tokens(s)),
        Value::Array(ids) => ids.len() as u64,
        _ => 0,
    };
    match input {
        Some(Value::Array(items)) if items.iter().all(|i| !i.is_number()) => items.iter().map(one).sum(),
        Some(v) => one(v),
        None => 0,
    }
}

/// Texts at least this long are remembered once counted: a batch repeats its system
/// prompt or instructions on every line, and counting is most of a line's cost.
const REMEMBER_FROM: usize = 48;
/// Counts remembered per thread at most.
const REMEMBERED: usize = 4_096;

thread_local! {
    static COUNTED: std::cell::RefCell<std::collections::HashMap<(u64, bool), u64>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `text`'s tokens under `encoding`.
fn counted(encoding: Encoding, text: &str) -> u64 {
    if text.len() < REMEMBER_FROM {
        return encoding.count(text) as u64;
    }
    let key = (xxhash_rust::xxh3::xxh3_64(text.as_bytes()), encoding == Encoding::O200kBase);
    if let Some(n) = COUNTED.with(|c| c.borrow().get(&key).copied()) {
        return n;
    }
    let n = encoding.count(text) as u64;
    COUNTED.with(|c| {
        let mut counts = c.borrow_mut();
        if counts.len() >= REMEMBERED {
            counts.clear();
        }
        counts.insert(key, n);
    });
    n
}

/// OpenAI's estimate from characters: about four per token.
fn chars_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, body: &str) -> String {
        format!(r#"{{"custom_id":"{id}","method":"POST","url":"/v1/chat/completions","body":{body}}}"#)
    }

    fn chat(model: &str, text: &str) -> String {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"{text}"}}],"max_tokens":10}}"#)
    }

    #[test]
    fn sizes_a_chat_request_as_prompt_plus_output() {
        let mut scanner = LineScanner::new(None, 1000);
        let lines = scanner.scan(line("a", &chat("gpt-4.1-mini", "hello world")).as_bytes());
        // chat overhead 3 + message 3 + 2 tokens; by characters ceil(11/4) + 3 = 6; plus 10 output.
        assert_eq!(lines[0].verdict, Ok(Size { prompt: 8, output: 10 }));
        assert_eq!(scanner.model(), Some("gpt-4.1-mini"));
        assert_eq!(scanner.endpoint(), Some("/v1/chat/completions"));
    }

    #[test]
    fn reports_each_problem_with_its_line_number() {
        let ok = chat("gpt-4.1-mini", "hi");
        let text = [
            line("a", &ok),
            "not json".to_owned(),
            String::new(),
            line("a", &ok),
            line(&"x".repeat(65), &ok),
            line("b", &chat("gpt-4.1", "hi")),
            line("c", r#"{"model":"gpt-4.1-mini","messages":[],"stream":true}"#),
            r#"{"custom_id":"d","method":"GET","url":"/v1/chat/completions","body":{}}"#.to_owned(),
            r#"{"custom_id":"e","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":"x"}}"#.to_owned(),
            r#"{"custom_id":"f","method":"POST","url":"/v1/nope","body":{}}"#.to_owned(),
            line("g", r#"{"messages":[]}"#),
            "[1,2]".to_owned(),
        ]
        .join("\r\n");
        let lines = LineScanner::new(None, 16).scan(text.as_bytes());
        let problems: Vec<(u64, String)> =
            lines.iter().filter_map(|l| l.verdict.clone().err().map(|p| (l.number, p))).collect();
        let numbers: Vec<u64> = problems.iter().map(|p| p.0).collect();
        assert_eq!(numbers, vec![2, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(problems[0].1.starts_with("not valid JSON"), "{problems:?}");
        assert!(problems[1].1.contains("more than once"));
        assert!(problems[2].1.contains("longer than 64"));
        assert!(problems[3].1.contains("one model per batch"));
        assert!(problems[4].1.contains("stream"));
        assert!(problems[5].1.contains("POST"));
        assert!(problems[6].1.contains("one endpoint per batch"));
        assert!(problems[7].1.starts_with("url must be one of"));
        assert!(problems[8].1.contains("no model"));
        assert!(problems[9].1.contains("JSON object"));
        assert!(!problems.iter().any(|p| p.1.contains("/v1/nope")), "content is not echoed");
    }

    #[test]
    fn blocks_continue_numbering_and_uniqueness() {
        let ok = chat("gpt-4.1-mini", "hi");
        let mut scanner = LineScanner::new(Some("/v1/chat/completions"), 16);
        let first = format!("{}\n{}\n", line("a", &ok), line("b", &ok));
        assert!(scanner.scan(first.as_bytes()).iter().all(|l| l.verdict.is_ok()));
        let second = scanner.scan(format!("{}\n", line("a", &ok)).as_bytes());
        assert_eq!(second[0].number, 3);
        assert!(second[0].verdict.as_ref().unwrap_err().contains("more than once"));
        assert_eq!(scanner.lines_read(), 3);
    }

    #[test]
    fn parallel_and_serial_scans_agree() {
        let ok: String = (0..5000)
            .map(|i| line(&format!("id-{i}"), &chat("gpt-4.1-mini", &"word ".repeat(i % 40))) + "\n")
            .collect();
        let mut parallel = LineScanner::new(None, 16);
        let mut serial = LineScanner::new(None, 16);
        serial.threads = 1;
        assert_eq!(parallel.scan(ok.as_bytes()), serial.scan(ok.as_bytes()));
    }

    #[test]
    fn splits_at_each_limit_and_joins_neighbours() {
        let ok = chat("gpt-4.1-mini", "hi"); // 3 + 3 + 1 tokens + 10 output = 17
        let text: String = (0..10).map(|i| line(&format!("id-{i}"), &ok) + "\n").collect();
        let size = line("id-0", &ok).len() as u64 + 1;
        let big = ChunkLimits { lines: 1000, bytes: 1 << 30, tokens: 1 << 40 };
        for (limits, chunks) in [
            (ChunkLimits { lines: 3, ..big }, vec![3, 3, 3, 1]),
            (ChunkLimits { bytes: 4 * size, ..big }, vec![4, 4, 2]),
            (ChunkLimits { tokens: 5 * 17, ..big }, vec![5, 5]),
        ] {
            let mut splitter = Splitter::new(LineScanner::new(None, 16), limits);
            let (runs, problems) = splitter.split(text.as_bytes());
            assert!(problems.is_empty());
            assert_eq!(runs.iter().map(|r| r.lines).collect::<Vec<_>>(), chunks, "{limits:?}");
            assert_eq!(runs.iter().map(|r| r.chunk).collect::<Vec<_>>(), (0..chunks.len() as u32).collect::<Vec<_>>());
            // A run's bytes are its lines, whole.
            let first = &text.as_bytes()[runs[0].span.clone()];
            assert_eq!(first.split(|b| *b == b'\n').count() as u64, runs[0].lines);
        }
        // A bad line between good ones breaks a run but not the chunk.
        let mixed = format!("{}\nnot json\n{}\n", line("a", &ok), line("b", &ok));
        let (runs, problems) = Splitter::new(LineScanner::new(None, 16), big).split(mixed.as_bytes());
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[0].chunk, runs[1].chunk), (0, 0));
        assert_eq!(problems[0].number, 2);
        // The file's model picks its own token limit.
        let by_model = HashMap::from([("gpt-4.1-mini".to_owned(), 2 * 17)]);
        let (runs, _) =
            Splitter::new(LineScanner::new(None, 16), big).with_model_tokens(by_model).split(text.as_bytes());
        assert_eq!(runs.iter().map(|r| r.lines).collect::<Vec<_>>(), vec![2; 5]);
        // A line bigger than a whole chunk may be is a problem, not a chunk of its own.
        let (runs, problems) =
            Splitter::new(LineScanner::new(None, 16), ChunkLimits { tokens: 16, ..big }).split(mixed.as_bytes());
        assert!(runs.is_empty());
        assert_eq!(problems.len(), 3);
        assert!(problems[0].reason.contains("may enqueue"));
    }

    #[test]
    fn sizes_other_endpoints() {
        let emb = r#"{"custom_id":"e","method":"POST","url":"/v1/embeddings","body":{"model":"text-embedding-3-small","input":["hello world","hi"]}}"#;
        assert_eq!(LineScanner::new(None, 99).scan(emb.as_bytes())[0].verdict, Ok(Size { prompt: 3 + 1, output: 0 }));
        let resp = r#"{"custom_id":"r","method":"POST","url":"/v1/responses","body":{"model":"gpt-4.1","input":"hello world","max_output_tokens":5}}"#;
        assert_eq!(LineScanner::new(None, 99).scan(resp.as_bytes())[0].verdict, Ok(Size { prompt: 3, output: 5 }));
    }
}
