//! Reading Shopfloor objects from YAML manifests, as an operator writes them for `kubectl apply`.
//!
//! Used by the standalone folder store and by `kubectl shopfloor validate`. A document that cannot
//! be read is reported with its file, its position in the file and the field at fault; documents
//! of other kinds (a Namespace in the same file, say) are skipped, not refused.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub use crate::object::Object;
use crate::{common::API_VERSION, validate::Invalid};

/// Where a document came from: file and 1-based index of the document in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

/// A document that could not be turned into a Shopfloor object.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{source_}: not valid YAML: {error}")]
    Yaml { source_: Source, error: serde_yaml::Error },
    #[error("{0}")]
    Field(Box<FieldError>),
    #[error("{0}")]
    Invalid(Box<InvalidAt>),
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{file}: {message}; the file is not read (split it, or flatten the YAML)")]
    TooComplex { file: PathBuf, message: String },
}

impl ManifestError {
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ManifestError::Yaml { source_, .. } => &source_.file,
            ManifestError::Field(f) => &f.source.file,
            ManifestError::Invalid(i) => &i.source.file,
            ManifestError::Io { path, .. } => path,
            ManifestError::TooComplex { file, .. } => file,
        }
    }
}

/// Largest manifest file read. Kubernetes stores objects of at most 1.5 MiB; a plant's folder
/// of them stays far below this.
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// Deepest flow-collection nesting (`[`, `{`) read. Shopfloor objects need under ten levels;
/// the YAML parser takes time quadratic in the depth of an unclosed nest, so one crafted file
/// of brackets would otherwise stall every reload for minutes.
pub const MAX_DEPTH: usize = 64;

/// Refuses text the YAML parser should not be given: too large, or nested too deep. Linear in
/// the text; quoted scalars and comments are skipped so brackets inside them do not count.
fn check_shape(text: &str) -> Result<(), String> {
    if text.len() > MAX_FILE_BYTES {
        return Err(format!("{} bytes, over the {MAX_FILE_BYTES}-byte limit for a manifest file", text.len()));
    }
    let (mut depth, mut max) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        match c {
            '#' if prev.is_whitespace() => while chars.next_if(|&n| n != '\n').is_some() {},
            '"' => {
                while let Some(n) = chars.next() {
                    match n {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' if !prev.is_alphanumeric() => {
                // '' is an escaped quote inside a single-quoted scalar.
                while let Some(n) = chars.next() {
                    if n == '\'' && chars.next_if_eq(&'\'').is_none() {
                        break;
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                max = max.max(depth);
                if max > MAX_DEPTH {
                    return Err(format!("collections nested deeper than {MAX_DEPTH} levels"));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    Ok(())
}

/// A document whose fields cannot be read into the object's type.
#[derive(Debug)]
pub struct FieldError {
    pub source: Source,
    pub kind: String,
    pub object: String,
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}: {}: {}", self.source, self.kind, self.object, self.field, self.message)
    }
}

fn field_error(source: Source, kind: String, object: String, field: &str, message: String) -> ManifestError {
    ManifestError::Field(Box::new(FieldError { source, kind, object, field: field.to_owned(), message }))
}

/// A parsed object that failed [`Validate`], with where it came from.
#[derive(Debug)]
pub struct InvalidAt {
    pub source: Source,
    pub invalid: Invalid,
}

impl fmt::Display for InvalidAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.invalid)
    }
}

/// A document read from a manifest: an object with its source, or why it could not be read.
pub type Loaded = Result<(Source, Object), ManifestError>;

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: HeadMeta,
}

#[derive(Deserialize, Default)]
struct HeadMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// Reads every Shopfloor object in a YAML text of one or more documents, without validating
/// them. Documents of other kinds and empty documents are skipped.
pub fn parse(file: &Path, text: &str) -> Vec<Loaded> {
    if let Err(message) = check_shape(text) {
        return vec![Err(ManifestError::TooComplex { file: file.to_owned(), message })];
    }
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let source = Source { file: file.to_owned(), document: i + 1 };
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(error) => {
                out.push(Err(ManifestError::Yaml { source_: source, error }));
                // A syntax error leaves the stream unusable; later documents cannot be trusted.
                break;
            }
        };
        if let Some(loaded) = parse_value(source, value) {
            out.push(loaded);
        }
    }
    out
}

fn parse_value(source: Source, value: serde_yaml::Value) -> Option<Loaded> {
    let head: Head = match serde_yaml::from_value(value.clone()) {
        Ok(h) => h,
        Err(e) => {
            return Some(Err(field_error(
                source,
                "document".into(),
                "?".into(),
                "apiVersion/kind/metadata",
                e.to_string(),
            )));
        }
    };
    let group = head.api_version.split('/').next().unwrap_or_default();
    if group != crate::common::GROUP {
        return None;
    }
    if !matches!(head.kind.as_str(), "EdgeAgent" | "Equipment" | "NetworkSlice" | "ControlCommand") {
        let message = format!(
            "`{}` is not a Shopfloor kind: use EdgeAgent, Equipment, NetworkSlice or ControlCommand",
            head.kind
        );
        return Some(Err(field_error(source, head.kind, head.metadata.name.unwrap_or_default(), "kind", message)));
    }
    if head.api_version != API_VERSION {
        let message = format!("`{}` is not served; use `{API_VERSION}`", head.api_version);
        return Some(Err(field_error(
            source,
            head.kind,
            head.metadata.name.unwrap_or_default(),
            "apiVersion",
            message,
        )));
    }
    let object = match (&head.metadata.namespace, &head.metadata.name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.clone(),
        _ => "<unnamed>".into(),
    };
    fn typed<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, (String, String)> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let field = e.path().to_string();
            (if field == "." { "(document)".into() } else { field }, e.into_inner().to_string())
        })
    }
    let parsed = match head.kind.as_str() {
        "EdgeAgent" => typed(value).map(Object::EdgeAgent),
        "Equipment" => typed(value).map(Object::Equipment),
        "NetworkSlice" => typed(value).map(Object::NetworkSlice),
        _ => typed(value).map(Object::ControlCommand),
    };
    Some(match parsed {
        Ok(obj) => Ok((source, obj)),
        Err((field, message)) => Err(field_error(source, head.kind, object, &field, message)),
    })
}

/// Parses and validates: a document that parses but breaks a rule becomes
/// [`ManifestError::Invalid`].
pub fn parse_valid(file: &Path, text: &str) -> Vec<Loaded> {
    parse(file, text)
        .into_iter()
        .map(|loaded| {
            let (source, obj) = loaded?;
            match obj.validate() {
                Ok(()) => Ok((source, obj)),
                Err(invalid) => Err(ManifestError::Invalid(Box::new(InvalidAt { source, invalid }))),
            }
        })
        .collect()
}

/// The manifest files of a folder (`*.yaml`, `*.yml`, `*.json`), sorted, not recursing; or the
/// file itself when `path` is a file.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io = |error| ManifestError::Io { path: path.to_owned(), error };
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let p = entry.path();
        let is_manifest = p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        // Editors' swap and backup files start with a dot or end in '~'; never read them.
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if is_manifest && !hidden && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses and validates every manifest under `path` (a file or a folder).
pub fn load_valid(path: &Path) -> Result<Vec<Loaded>, ManifestError> {
    let mut out = Vec::new();
    for file in manifest_files(path)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => out.extend(parse_valid(&file, &text)),
            Err(error) => out.push(Err(ManifestError::Io { path: file, error })),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reported stall: 400 KB of nested brackets kept the parser busy for 30+ s (67 s for
    /// `{a: ` repeated, measured). Such files are refused before the parser sees them.
    #[test]
    fn deeply_nested_or_huge_files_are_refused_before_parsing() {
        for text in ["[".repeat(400_000), "{a: ".repeat(100_000), format!("a: {}", "[".repeat(65))] {
            let out = parse(Path::new("bomb.yaml"), &text);
            assert!(
                matches!(&out[..], [Err(ManifestError::TooComplex { message, .. })] if message.contains("nested deeper than 64")),
                "{out:?}"
            );
        }
        let big = format!("# {}\n", "x".repeat(MAX_FILE_BYTES));
        let out = parse(Path::new("big.yaml"), &big);
        assert!(matches!(&out[..], [Err(ManifestError::TooComplex { .. })]), "{out:?}");
        let err = out.into_iter().next().and_then(Result::err).expect("error").to_string();
        assert!(err.starts_with("big.yaml: ") && err.contains("limit"), "{err}");
    }

    #[test]
    fn brackets_in_quotes_and_comments_do_not_count() {
        let deep = "[".repeat(100);
        for text in [
            format!("a: \"{deep}\"\n"),
            format!("a: '{deep} it''s'\n"),
            format!("a: 1 # {deep}\n"),
            "a: {b: [1, {c: [2]}]}\n".to_owned(),
        ] {
            assert_eq!(check_shape(&text), Ok(()), "{text}");
        }
    }
}
