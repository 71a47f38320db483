//! CLIP's byte-level BPE tokenizer, written to give exactly the ids of transformers' (v5)
//! `CLIPTokenizer`, which runs this pipeline in the `tokenizers` library:
//!
//! 1. special ("added") tokens are cut out of the raw text first, so `<|endoftext|>` typed in a
//!    prompt becomes that token, and so does every `!` when `!` is registered as the pad token;
//! 2. each remaining piece is normalized: NFC, runs of whitespace to one space, per-character
//!    lowercase;
//! 3. it is split into words by CLIP's regex (whitespace dropped), each word split again by the
//!    GPT-2 byte-level regex and mapped byte by byte to printable characters;
//! 4. each word is BPE-merged with `</w>` glued to its last symbol;
//! 5. `<|startoftext|> ... <|endoftext|>`, truncated to `model_max_length` (eos kept last) and
//!    padded with the pad token.

use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::error::{Error, Result};

const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
const DEFAULT_MAX_LENGTH: usize = 77;
const END_OF_WORD: &str = "</w>";

/// CLIP's word split; matches are kept, everything between them (whitespace) is dropped.
const CLIP_SPLIT: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
/// GPT-2's split as the byte-level pre-tokenizer applies it inside each CLIP word. CLIP words
/// never hold whitespace, so GPT-2's optional leading space and its whitespace branches (the
/// only ones needing look-ahead) can never match and are left out.
const BYTE_LEVEL_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

/// A prompt as token ids, ready for the text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// Exactly `max_length` ids: bos, the prompt's tokens, eos, then padding.
    pub ids: Vec<u32>,
    /// Tokens the prompt needs, bos and eos included, before truncation and padding.
    pub n_tokens: usize,
    /// Whether tokens were dropped to fit `max_length`.
    pub truncated: bool,
}

/// A token matched in the text before BPE (bos, eos, pad, ...).
#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: u32,
    /// Matched in the normalized text rather than the raw text.
    normalized: bool,
}

/// CLIP's tokenizer, loaded from a diffusers `tokenizer/` folder.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, u32>,
    /// (left, right) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    added: Vec<AddedToken>,
    byte_chars: [char; 256],
    clip_split: Regex,
    byte_level_split: Regex,
    whitespace: Regex,
    unk_id: Option<u32>,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    max_length: usize,
}

/// The special tokens and length from `tokenizer_config.json` / `special_tokens_map.json`.
struct SpecialTokens {
    bos: String,
    eos: String,
    pad: String,
    unk: String,
    max_length: usize,
    /// The file each token came from, for error messages.
    source: HashMap<&'static str, PathBuf>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, format!("invalid JSON: {e}")))
}

/// A special token is either a string or, in files written by older transformers, an
/// `AddedToken` object with a `content` field.
fn token_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn read_special_tokens(dir: &Path) -> Result<SpecialTokens> {
    let mut st = SpecialTokens {
        bos: DEFAULT_BOS.into(),
        eos: DEFAULT_EOS.into(),
        pad: DEFAULT_EOS.into(),
        unk: DEFAULT_EOS.into(),
        max_length: DEFAULT_MAX_LENGTH,
        source: HashMap::new(),
    };
    // special_tokens_map.json is written after tokenizer_config.json by transformers and wins.
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let json = read_json(&path)?;
        for (key, slot) in [
            ("bos_token", &mut st.bos),
            ("eos_token", &mut st.eos),
            ("pad_token", &mut st.pad),
            ("unk_token", &mut st.unk),
        ] {
            match json.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    *slot = token_string(v).ok_or_else(|| {
                        Error::config(&path, format!("key `{key}`: expected a string or an object with `content`"))
                    })?;
                    st.source.insert(key, path.clone());
                }
            }
        }
        if let Some(v) = json.get("model_max_length") {
            // transformers writes int(1e30) when the length is unknown; that means "not set".
            let n = v
                .as_f64()
                .filter(|n| *n >= 0.0 && n.fract() == 0.0)
                .ok_or_else(|| Error::config(&path, "key `model_max_length`: expected a non-negative integer"))?;
            if n < 1e29 {
                if n < 2.0 {
                    return Err(Error::config(
                        &path,
                        format!("key `model_max_length`: {n} leaves no room for <|startoftext|> and <|endoftext|>"),
                    ));
                }
                st.max_length = n as usize;
            }
        }
    }
    Ok(st)
}

/// GPT-2's reversible byte -> printable character table: printable Latin-1 bytes map to
/// themselves, the rest to code points from 256 upwards in byte order.
fn byte_chars() -> [char; 256] {
    let keeps = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let c = if keeps(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).expect("code points below 512 are valid chars");
    }
    table
}

fn parse_merge_line(line: &str) -> Option<(String, String)> {
    let mut parts = line.split(' ');
    let (a, b) = (parts.next()?, parts.next()?);
    if a.is_empty() || b.is_empty() || parts.next().is_some() {
        return None;
    }
    Some((a.to_owned(), b.to_owned()))
}

/// Vocabulary, merges and added tokens, as read from either file layout.
struct Model {
    vocab: HashMap<String, u32>,
    merges: Vec<(String, String)>,
    added: Vec<AddedToken>,
    /// The file the merges came from, for errors.
    merges_path: PathBuf,
    /// The file the vocabulary came from, for errors.
    vocab_path: PathBuf,
}

fn load_vocab_merges(vocab_path: &Path, merges_path: &Path) -> Result<Model> {
    let text = std::fs::read_to_string(vocab_path).map_err(|e| Error::io(vocab_path, e))?;
    let vocab: HashMap<String, u32> = serde_json::from_str(&text)
        .map_err(|e| Error::config(vocab_path, format!("expected a JSON object of token -> id: {e}")))?;
    let text = std::fs::read_to_string(merges_path).map_err(|e| Error::io(merges_path, e))?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // The first line is a "#version: ..." header; blank lines carry nothing.
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let pair = parse_merge_line(line)
            .ok_or_else(|| Error::config(merges_path, format!("line {}: expected two symbols, got {line:?}", i + 1)))?;
        merges.push(pair);
    }
    Ok(Model {
        vocab,
        merges,
        added: Vec::new(),
        merges_path: merges_path.to_owned(),
        vocab_path: vocab_path.to_owned(),
    })
}

fn load_tokenizer_json(path: &Path) -> Result<Model> {
    let json = read_json(path)?;
    let bad = |key: &str, msg: &str| Error::config(path, format!("key `{key}`: {msg}"));
    let model = json.get("model").ok_or_else(|| bad("model", "missing"))?;
    match model.get("type").and_then(Value::as_str) {
        Some("BPE") => {}
        other => return Err(bad("model.type", &format!("{other:?} is not supported, only \"BPE\""))),
    }
    match model.get("end_of_word_suffix") {
        Some(Value::String(s)) if s == END_OF_WORD => {}
        other => return Err(bad("model.end_of_word_suffix", &format!("{other:?} is not supported, only \"</w>\""))),
    }
    match model.get("continuing_subword_prefix") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(other) => return Err(bad("model.continuing_subword_prefix", &format!("{other} is not supported"))),
    }
    let vocab: HashMap<String, u32> = serde_json::from_value(model.get("vocab").cloned().unwrap_or(Value::Null))
        .map_err(|e| bad("model.vocab", &format!("expected an object of token -> id: {e}")))?;
    let list = model.get("merges").and_then(Value::as_array).ok_or_else(|| bad("model.merges", "expected a list"))?;
    let mut merges = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        // Newer files store ["a", "b"], older ones "a b".
        let pair = match m {
            Value::String(s) => parse_merge_line(s),
            Value::Array(a) => match a.as_slice() {
                [Value::String(x), Value::String(y)] => Some((x.clone(), y.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| bad(&format!("model.merges[{i}]"), "expected two symbols"))?);
    }
    let mut added = Vec::new();
    if let Some(list) = json.get("added_tokens").and_then(Value::as_array) {
        for (i, t) in list.iter().enumerate() {
            let key = |k: &str| format!("added_tokens[{i}].{k}");
            let content = t.get("content").and_then(Value::as_str).ok_or_else(|| bad(&key("content"), "missing"))?;
            let id = t.get("id").and_then(Value::as_u64).ok_or_else(|| bad(&key("id"), "missing"))?;
            // lstrip/rstrip only move whitespace, which CLIP's split drops anyway; single_word
            // changes which occurrences match and is not implemented.
            if t.get("single_word").and_then(Value::as_bool).unwrap_or(false) {
                return Err(bad(&key("single_word"), "true is not supported"));
            }
            added.push(AddedToken {
                content: content.to_owned(),
                id: id as u32,
                normalized: t.get("normalized").and_then(Value::as_bool).unwrap_or(false),
            });
        }
    }
    Ok(Model { vocab, merges, added, merges_path: path.to_owned(), vocab_path: path.to_owned() })
}

impl ClipTokenizer {
    /// Loads a tokenizer folder: `vocab.json` + `merges.txt`, or `tokenizer.json` when those two
    /// are absent, with `tokenizer_config.json` (pad token, `model_max_length`; defaults
    /// `<|endoftext|>` and 77) and `special_tokens_map.json` if present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Model(format!("tokenizer folder {} does not exist", dir.display())));
        }
        let (vocab_path, merges_path, json_path) =
            (dir.join("vocab.json"), dir.join("merges.txt"), dir.join("tokenizer.json"));
        let model = if vocab_path.is_file() || merges_path.is_file() || !json_path.is_file() {
            if !vocab_path.is_file() && !merges_path.is_file() {
                return Err(Error::Model(format!(
                    "tokenizer folder {} has neither vocab.json + merges.txt nor tokenizer.json",
                    dir.display()
                )));
            }
            load_vocab_merges(&vocab_path, &merges_path)?
        } else {
            load_tokenizer_json(&json_path)?
        };
        let special = read_special_tokens(dir)?;
        Self::build(model, special)
    }

    fn build(model: Model, special: SpecialTokens) -> Result<Self> {
        let Model { mut vocab, merges: merge_list, mut added, merges_path, vocab_path } = model;
        for t in &added {
            vocab.entry(t.content.clone()).or_insert(t.id);
        }
        // transformers registers bos/eos/unk/pad as special tokens, matched in the raw text,
        // even when the files only list them in the vocabulary.
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            let content = match key {
                "bos_token" => &special.bos,
                "eos_token" => &special.eos,
                "unk_token" => &special.unk,
                _ => &special.pad,
            };
            if added.iter().any(|t| &t.content == content) {
                continue;
            }
            let Some(&id) = vocab.get(content) else {
                if key == "unk_token" {
                    // An unknown unk only matters if a symbol is missing from the vocabulary.
                    continue;
                }
                let file = special.source.get(key).cloned().unwrap_or_else(|| vocab_path.clone());
                return Err(Error::config(file, format!("key `{key}`: {content:?} is not in the vocabulary")));
            };
            added.push(AddedToken { content: content.clone(), id, normalized: false });
        }
        let mut merges = HashMap::with_capacity(merge_list.len());
        for (rank, (a, b)) in merge_list.into_iter().enumerate() {
            let missing = |s: &str| {
                Error::config(&merges_path, format!("merge {} ({a} {b}): {s:?} is not in the vocabulary", rank + 1))
            };
            let ia = *vocab.get(&a).ok_or_else(|| missing(&a))?;
            let ib = *vocab.get(&b).ok_or_else(|| missing(&b))?;
            let merged = format!("{a}{b}");
            let im = *vocab.get(&merged).ok_or_else(|| missing(&merged))?;
            // The first occurrence of a pair defines its rank.
            merges.entry((ia, ib)).or_insert((rank as u32, im));
        }
        let id_of = |s: &str| vocab.get(s).copied();
        let unk_id = id_of(&special.unk);
        let bos_id = id_of(&special.bos).expect("checked above");
        let eos_id = id_of(&special.eos).expect("checked above");
        let pad_id = id_of(&special.pad).expect("checked above");
        let mut tok = ClipTokenizer {
            vocab,
            merges,
            added: Vec::new(),
            byte_chars: byte_chars(),
            clip_split: Regex::new(CLIP_SPLIT).expect("valid regex"),
            byte_level_split: Regex::new(BYTE_LEVEL_SPLIT).expect("valid regex"),
            whitespace: Regex::new(r"\s+").expect("valid regex"),
            unk_id,
            bos_id,
            eos_id,
            pad_id,
            max_length: special.max_length,
        };
        // Normalized added tokens are looked for in normalized text, so normalize them too.
        for t in &mut added {
            if t.normalized {
                t.content = tok.normalize(&t.content);
            }
        }
        added.retain(|t| !t.content.is_empty());
        tok.added = added;
        Ok(tok)
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The same vocabulary padded with `pad` (SD 2.x's tokenizer pads with `!`), which, as
    /// transformers does with every special token, is then matched in the raw text too.
    pub fn with_pad_token(mut self, pad: &str) -> std::result::Result<Self, String> {
        let id = *self.vocab.get(pad).ok_or_else(|| format!("pad token {pad:?} is not in the vocabulary"))?;
        if !self.added.iter().any(|t| t.content == pad) {
            self.added.push(AddedToken { content: pad.to_string(), id, normalized: false });
        }
        self.pad_id = id;
        Ok(self)
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Tokenizes like `CLIPTokenizer(text, padding="max_length", max_length=model_max_length,
    /// truncation=True)`.
    pub fn encode(&self, text: &str) -> TokenizedPrompt {
        let body = self.tokenize(text);
        let n_tokens = body.len() + 2;
        let keep = body.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(self.max_length);
        ids.push(self.bos_id);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos_id);
        ids.resize(self.max_length, self.pad_id);
        TokenizedPrompt { ids, n_tokens, truncated: n_tokens > self.max_length }
    }

    /// The prompt's token ids, without bos/eos.
    fn tokenize(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for raw in self.split_added(text, false) {
            let piece = match raw {
                Piece::Added(id) => {
                    out.push(id);
                    continue;
                }
                Piece::Text(s) => s,
            };
            let normalized = self.normalize(piece);
            for part in self.split_added(&normalized, true) {
                match part {
                    Piece::Added(id) => out.push(id),
                    Piece::Text(s) => self.encode_words(s, &mut out),
                }
            }
        }
        out
    }

    fn normalize(&self, text: &str) -> String {
        let nfc: String = text.nfc().map(|(c, _)| c).collect();
        let collapsed = self.whitespace.replace_all(&nfc, " ");
        // Per character, as the `tokenizers` Lowercase normalizer does (so no final-sigma rule).
        collapsed.chars().flat_map(char::to_lowercase).collect()
    }

    /// Cuts the added tokens (normalized or raw ones) out of `text`, taking at each position the
    /// leftmost, then longest, match.
    fn split_added<'a>(&self, text: &'a str, normalized: bool) -> Vec<Piece<'a>> {
        let mut pieces = Vec::new();
        let mut start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let best = self
                .added
                .iter()
                .filter(|t| t.normalized == normalized && rest.starts_with(t.content.as_str()))
                .max_by_key(|t| t.content.len());
            match best {
                Some(t) => {
                    if start < pos {
                        pieces.push(Piece::Text(&text[start..pos]));
                    }
                    pieces.push(Piece::Added(t.id));
                    pos += t.content.len();
                    start = pos;
                }
                None => pos += rest.chars().next().map_or(1, char::len_utf8),
            }
        }
        if start < text.len() {
            pieces.push(Piece::Text(&text[start..]));
        }
        pieces
    }

    fn encode_words(&self, text: &str, out: &mut Vec<u32>) {
        for word in self.clip_split.find_iter(text) {
            for sub in self.byte_level_split.find_iter(word.as_str()) {
                self.bpe(sub.as_str(), out);
            }
        }
    }

    /// Byte-level BPE of one word: its bytes become symbols, `</w>` is glued to the last one,
    /// then the adjacent pair with the lowest merge rank (leftmost on ties) is merged until no
    /// pair has a merge.
    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        let bytes = word.as_bytes();
        let mut syms: Vec<Symbol> = Vec::with_capacity(bytes.len());
        let mut buf = String::new();
        for (i, &b) in bytes.iter().enumerate() {
            buf.clear();
            buf.push(self.byte_chars[b as usize]);
            if i + 1 == bytes.len() {
                buf.push_str(END_OF_WORD);
            }
            match self.vocab.get(&buf).copied().or(self.unk_id) {
                Some(id) => syms.push(Symbol { id, prev: None, next: None, alive: true }),
                // Without an unk token, `tokenizers` drops symbols missing from the vocabulary.
                None => continue,
            }
        }
        let n = syms.len();
        for (i, sym) in syms.iter_mut().enumerate() {
            sym.prev = i.checked_sub(1);
            sym.next = (i + 1 < n).then_some(i + 1);
        }
        // Min-heap on (rank, position); entries are checked against the current symbols when
        // popped, so stale ones left behind by earlier merges are skipped.
        let mut heap = BinaryHeap::new();
        let push_pair =
            |heap: &mut BinaryHeap<std::cmp::Reverse<(u32, usize, u32, u32)>>, syms: &[Symbol], i: usize| {
                if let Some(j) = syms[i].next {
                    if let Some(&(rank, _)) = self.merges.get(&(syms[i].id, syms[j].id)) {
                        heap.push(std::cmp::Reverse((rank, i, syms[i].id, syms[j].id)));
                    }
                }
            };
        for i in 0..n {
            push_pair(&mut heap, &syms, i);
        }
        while let Some(std::cmp::Reverse((_, i, left, right))) = heap.pop() {
            let Some(j) = syms[i].next else { continue };
            if !syms[i].alive || syms[i].id != left || syms[j].id != right {
                continue;
            }
            let (_, merged) = self.merges[&(left, right)];
            syms[i].id = merged;
            syms[i].next = syms[j].next;
            syms[j].alive = false;
            if let Some(k) = syms[j].next {
                syms[k].prev = Some(i);
            }
            if let Some(p) = syms[i].prev {
                push_pair(&mut heap, &syms, p);
            }
            push_pair(&mut heap, &syms, i);
        }
        out.extend(syms.iter().filter(|s| s.alive).map(|s| s.id));
    }
}

enum Piece<'a> {
    Text(&'a str),
    Added(u32),
}

struct Symbol {
    id: u32,
    prev: Option<usize>,
    next: Option<usize>,
    alive: bool,
}
