//! Tokenization for BERT-family models through Hugging Face's `tokenizers` crate: `tokenizer.json`
//! as the model ships it (WordPiece, RoBERTa's byte-level BPE, XLM-R's SentencePiece Unigram, with
//! the file's own post-processor: `[CLS] A [SEP]`, `<s> A </s>`, ...), or a `vocab.txt` WordPiece
//! pipeline (BERT normalizer, pre-tokenizer and `[CLS] A [SEP] (B [SEP])` post-processor) when
//! there is no `tokenizer.json`. For models with one token type (RoBERTa, XLM-R, DistilBERT) every
//! token type is 0, as their HF tokenizers (which return no `token_type_ids`) leave the model.
//!
//! Padding and truncation pinned in the file (all-MiniLM-L6-v2 pins both to 128) are replaced:
//! batches are padded (right) to their longest sequence and truncated (longest first) at
//! `max_length`, exactly like `tokenizer(texts, padding=True, truncation=True, max_length=N)`.
//!
//! Pre-split words (tagging) are tokenized as HF's fast tokenizer does with
//! `is_split_into_words=True` when loaded with `add_prefix_space=True`, which RoBERTa-style
//! byte-level BPE tokenizers require for pre-split words: each word gets the space a word inside a
//! sentence has (`Ġword`), the first one included.

use crate::model::config::{BertConfig, Family};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{
    AddedToken, EncodeInput, PaddingDirection, PaddingParams, PaddingStrategy, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

/// One batch, padded to its longest sequence: row `i` of each field belongs to input `i`, and
/// every row has `seq_len` entries.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Encoded {
    pub input_ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// 0 for the first text (and its `[CLS]`/`[SEP]`), 1 for the second of a pair.
    pub token_type_ids: Vec<Vec<u32>>,
    pub seq_len: usize,
    /// Per row: whether the input was longer than the max length and was cut.
    pub truncated: Vec<bool>,
}

impl Encoded {
    pub fn batch_size(&self) -> usize {
        self.input_ids.len()
    }

    /// `[batch * seq_len]`, row-major.
    pub fn flat_input_ids(&self) -> Vec<u32> {
        self.input_ids.concat()
    }

    /// Real (unpadded) length of each row.
    pub fn lengths(&self) -> Vec<usize> {
        self.attention_mask.iter().map(|r| r.iter().filter(|&&m| m != 0).count()).collect()
    }
}

/// One pre-split sentence tokenized ([`Tokenizer::encode_words`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedWords {
    pub ids: Vec<u32>,
    pub types: Vec<u32>,
    /// Per token, the index of its word (`None`: a special token).
    pub word_ids: Vec<Option<u32>>,
    /// Whether words were cut off at the max length.
    pub truncated: bool,
}

/// A BERT tokenizer with our padding / truncation policy.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// For pre-split words where they tokenize differently from `inner` (a byte-level
    /// pre-tokenizer without `add_prefix_space`): `inner` with the prefix space.
    words: Option<tokenizers::Tokenizer>,
    max_length: usize,
    source: PathBuf,
    /// Every token type 0 (the model has one).
    single_token_type: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("source", &self.source).field("max_length", &self.max_length).finish()
    }
}

impl Tokenizer {
    /// The tokenizer of the model in `dir` with config `cfg`: truncating at `max_length` or the
    /// model's longest sequence, whichever is shorter; one token type when the model has one.
    pub fn for_model(dir: impl AsRef<Path>, cfg: &BertConfig, max_length: usize) -> Result<Self> {
        Self::for_model_files(&TokenizerFiles::read(dir.as_ref())?, cfg, max_length)
    }

    /// [`for_model`](Self::for_model) from the folder's files in memory (the browser build: the
    /// files a user picked).
    pub fn for_model_files(files: &TokenizerFiles, cfg: &BertConfig, max_length: usize) -> Result<Self> {
        Self::check_family_files(&files.folder, cfg, files.tokenizer_json.is_some())?;
        let mut t = Self::from_files(files, max_length.min(cfg.max_sequence_length()))?;
        t.single_token_type = cfg.type_vocab_size == 1 || !cfg.layout.token_types;
        Ok(t)
    }

    /// Models that are not WordPiece need a `tokenizer.json`.
    fn check_family_files(dir: &Path, cfg: &BertConfig, has_tokenizer_json: bool) -> Result<()> {
        let word_piece = matches!(cfg.family(), Family::Bert | Family::DistilBert | Family::Electra);
        if !word_piece && !has_tokenizer_json {
            bail!(
                "{}: no tokenizer.json ({} models need it; vocab.json / merges.txt / sentencepiece.bpe.model are not read: \
                 save one with `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`)",
                dir.display(),
                cfg.model_type
            );
        }
        Ok(())
    }

    /// `tokenizer.json` in `dir`, or else `vocab.txt` (lower-casing as `tokenizer_config.json`'s
    /// `do_lower_case` says; true when absent, as for BERT's uncased models).
    pub fn from_model_dir(dir: impl AsRef<Path>, max_length: usize) -> Result<Self> {
        Self::from_files(&TokenizerFiles::read(dir.as_ref())?, max_length)
    }

    /// [`from_model_dir`](Self::from_model_dir) from the folder's files in memory.
    fn from_files(files: &TokenizerFiles, max_length: usize) -> Result<Self> {
        let dir = &files.folder;
        match (&files.tokenizer_json, &files.vocab_txt) {
            (Some(json), _) => Self::from_tokenizer_json_bytes(json, &dir.join("tokenizer.json"), max_length),
            (None, Some(vocab)) => {
                let opts = match &files.tokenizer_config {
                    Some(text) => {
                        BertVocabOptions::from_tokenizer_config_json(text, &dir.join("tokenizer_config.json"))?
                    }
                    None => BertVocabOptions::default(),
                };
                Self::from_vocab_txt_bytes(vocab, &dir.join("vocab.txt"), &opts, max_length)
            }
            (None, None) => bail!("{}: no tokenizer.json or vocab.txt to build a tokenizer from", dir.display()),
        }
    }

    /// Loads a Hugging Face `tokenizer.json`. The file's padding token is kept (else `[PAD]`, or
    /// RoBERTa's and XLM-R's `<pad>`).
    pub fn from_tokenizer_json(path: impl AsRef<Path>, max_length: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot load tokenizer", path.display()))?;
        Self::from_tokenizer_json_bytes(&bytes, path, max_length)
    }

    /// [`from_tokenizer_json`](Self::from_tokenizer_json) from the file's bytes (`path` names it).
    pub fn from_tokenizer_json_bytes(bytes: &[u8], path: &Path, max_length: usize) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| anyhow!("{}: cannot load tokenizer: {e}", path.display()))?;
        let (pad_id, pad_token, pad_type_id) = match inner.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone(), p.pad_type_id),
            None => {
                let (id, token) = ["[PAD]", "<pad>"]
                    .into_iter()
                    .find_map(|t| inner.token_to_id(t).map(|id| (id, t)))
                    .with_context(|| {
                    format!("{}: no padding configured and no [PAD] or <pad> token in the vocabulary", path.display())
                })?;
                (id, token.to_string(), 0)
            }
        };
        Self::finish(inner, path, max_length, pad_id, pad_token, pad_type_id)
    }

    /// Builds BERT's WordPiece pipeline from a `vocab.txt` (one token per line, id = line number).
    pub fn from_vocab_txt(path: impl AsRef<Path>, opts: &BertVocabOptions, max_length: usize) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read vocabulary", path.display()))?;
        Self::from_vocab_txt_bytes(&bytes, path, opts, max_length)
    }

    /// [`from_vocab_txt`](Self::from_vocab_txt) from the file's bytes (`path` names it).
    pub fn from_vocab_txt_bytes(bytes: &[u8], path: &Path, opts: &BertVocabOptions, max_length: usize) -> Result<Self> {
        let vocab =
            WordPiece::read_bytes(bytes).map_err(|e| anyhow!("{}: cannot read vocabulary: {e}", path.display()))?;
        let id = |tok: &str| -> Result<u32> {
            vocab.get(tok).copied().with_context(|| format!("{}: vocabulary has no {tok} token", path.display()))
        };
        let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        id("[UNK]")?;
        let model = WordPiece::builder()
            .vocab(vocab.clone())
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(
                true,
                opts.tokenize_chinese_chars,
                opts.strip_accents,
                opts.lowercase,
            )))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))))
            .with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        // As BertTokenizerFast does: the special tokens are never split or lower-cased.
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|t| vocab.contains_key(**t))
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(&specials);
        Self::finish(inner, path, max_length, pad, "[PAD]".into(), 0)
    }

    fn finish(
        mut inner: tokenizers::Tokenizer,
        path: &Path,
        max_length: usize,
        pad_id: u32,
        pad_token: String,
        pad_type_id: u32,
    ) -> Result<Self> {
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id,
            pad_token,
        }));
        let words = prefix_space_pre_tokenizer(inner.get_pre_tokenizer()).map(|p| {
            let mut w = inner.clone();
            w.with_pre_tokenizer(Some(p));
            w
        });
        let mut t = Self { inner, words, max_length: 0, source: path.to_path_buf(), single_token_type: false };
        t.set_max_length(max_length)?;
        Ok(t)
    }

    /// Truncation length (special tokens included). Must leave room for `[CLS] a [SEP] b [SEP]`.
    pub fn set_max_length(&mut self, max_length: usize) -> Result<()> {
        if max_length < 4 {
            bail!("max_length {max_length} is too short: [CLS] and [SEP] tokens alone take 2 (3 for pairs)");
        }
        let params = TruncationParams {
            direction: TruncationDirection::Right,
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        };
        for t in std::iter::once(&mut self.inner).chain(self.words.as_mut()) {
            t.with_truncation(Some(params.clone())).map_err(|e| anyhow!("setting truncation to {max_length}: {e}"))?;
        }
        self.max_length = max_length;
        Ok(())
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The file this tokenizer was built from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer (our padding / truncation already set).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Single texts: `[CLS] text [SEP]`, padded to the longest in the batch.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<Encoded> {
        let inputs: Vec<EncodeInput> = texts.iter().map(|t| EncodeInput::Single(t.as_ref().into())).collect();
        self.run(inputs)
    }

    /// Text pairs: `[CLS] a [SEP] b [SEP]`, token type 1 on `b [SEP]`.
    pub fn encode_pairs<A: AsRef<str>, B: AsRef<str>>(&self, pairs: &[(A, B)]) -> Result<Encoded> {
        let inputs: Vec<EncodeInput> =
            pairs.iter().map(|(a, b)| EncodeInput::Dual(a.as_ref().into(), b.as_ref().into())).collect();
        self.run(inputs)
    }

    /// Pre-split words (token classification): `[CLS] w1 w2 … [SEP]`, truncated, unpadded, with
    /// each token's word index (`None` for the special tokens) and whether it was truncated.
    /// Byte-level BPE words get a prefix space each, as HF's `add_prefix_space=True` gives them.
    pub fn encode_words<S: AsRef<str>>(&self, words: &[S]) -> Result<EncodedWords> {
        let words: Vec<&str> = words.iter().map(|w| w.as_ref()).collect();
        let e = self
            .words
            .as_ref()
            .unwrap_or(&self.inner)
            .encode(EncodeInput::Single(words.as_slice().into()), true)
            .map_err(|e| anyhow!("tokenizing with {}: {e}", self.source.display()))?;
        let len = e.get_attention_mask().iter().filter(|&&m| m != 0).count();
        let types = if self.single_token_type { vec![0; len] } else { e.get_type_ids()[..len].to_vec() };
        Ok(EncodedWords {
            ids: e.get_ids()[..len].to_vec(),
            types,
            word_ids: e.get_word_ids()[..len].to_vec(),
            truncated: !e.get_overflowing().is_empty(),
        })
    }

    fn run(&self, inputs: Vec<EncodeInput>) -> Result<Encoded> {
        if inputs.is_empty() {
            return Ok(Encoded::default());
        }
        let encs = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| anyhow!("tokenizing with {}: {e}", self.source.display()))?;
        let seq_len = encs.first().map_or(0, |e| e.len());
        let mut out = Encoded { seq_len, ..Default::default() };
        for e in &encs {
            debug_assert_eq!(e.len(), seq_len);
            out.input_ids.push(e.get_ids().to_vec());
            out.attention_mask.push(e.get_attention_mask().to_vec());
            let types = if self.single_token_type { vec![0; e.len()] } else { e.get_type_ids().to_vec() };
            out.token_type_ids.push(types);
            out.truncated.push(!e.get_overflowing().is_empty());
        }
        Ok(out)
    }
}

/// The pre-tokenizer that HF's RoBERTa / GPT-2 fast tokenizers use when loaded with
/// `add_prefix_space=True` (they rewrite a top-level `ByteLevel` pre-tokenizer's flag, nothing
/// else), or `None` when that is the file's own (already set, or not byte-level).
fn prefix_space_pre_tokenizer(p: Option<&PreTokenizerWrapper>) -> Option<PreTokenizerWrapper> {
    match p {
        Some(PreTokenizerWrapper::ByteLevel(b)) if !b.add_prefix_space => {
            Some(PreTokenizerWrapper::ByteLevel(b.add_prefix_space(true)))
        }
        _ => None,
    }
}

/// A model folder's tokenizer files in memory (the browser build: the files a user picked).
#[derive(Clone, Debug, Default)]
pub struct TokenizerFiles {
    /// The folder's name, for the errors.
    pub folder: PathBuf,
    pub tokenizer_json: Option<Vec<u8>>,
    pub vocab_txt: Option<Vec<u8>>,
    pub tokenizer_config: Option<String>,
}

impl TokenizerFiles {
    /// The files of `dir` a tokenizer is built from: `tokenizer.json` when there is one, else
    /// `vocab.txt` and `tokenizer_config.json` (each when present).
    pub fn read(dir: &Path) -> Result<Self> {
        let mut files = Self { folder: dir.to_path_buf(), ..Default::default() };
        let json = dir.join("tokenizer.json");
        if json.exists() {
            files.tokenizer_json =
                Some(std::fs::read(&json).with_context(|| format!("{}: cannot load tokenizer", json.display()))?);
            return Ok(files);
        }
        let vocab = dir.join("vocab.txt");
        if vocab.exists() {
            files.vocab_txt =
                Some(std::fs::read(&vocab).with_context(|| format!("{}: cannot read vocabulary", vocab.display()))?);
            let config = dir.join("tokenizer_config.json");
            if config.exists() {
                files.tokenizer_config =
                    Some(std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?);
            }
        }
        Ok(files)
    }
}

/// How to build the `vocab.txt` pipeline (BertTokenizer's options).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BertVocabOptions {
    pub lowercase: bool,
    /// `None`: strip accents exactly when lower-casing (BERT's rule).
    pub strip_accents: Option<bool>,
    pub tokenize_chinese_chars: bool,
}

impl Default for BertVocabOptions {
    fn default() -> Self {
        Self { lowercase: true, strip_accents: None, tokenize_chinese_chars: true }
    }
}

impl BertVocabOptions {
    /// Reads `do_lower_case`, `strip_accents`, `tokenize_chinese_chars` from
    /// `<dir>/tokenizer_config.json` when it exists; defaults otherwise.
    pub fn from_tokenizer_config(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_tokenizer_config_json(&text, &path)
    }

    /// [`from_tokenizer_config`](Self::from_tokenizer_config) from the file's text (`path` names it).
    pub fn from_tokenizer_config_json(text: &str, path: &Path) -> Result<Self> {
        let mut o = Self::default();
        let v: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("{}: invalid JSON", path.display()))?;
        let get_bool = |k: &str| -> Result<Option<bool>> {
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::Bool(b)) => Ok(Some(*b)),
                Some(other) => bail!("{}: {k} must be a boolean, got {other}", path.display()),
            }
        };
        if let Some(b) = get_bool("do_lower_case")? {
            o.lowercase = b;
        }
        o.strip_accents = get_bool("strip_accents")?;
        if let Some(b) = get_bool("tokenize_chinese_chars")? {
            o.tokenize_chinese_chars = b;
        }
        Ok(o)
    }
}
