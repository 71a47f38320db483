//! The batch manifest: JSON Lines, or CSV with a header, one edit per row.
//!
//! Each row names `image` (relative to the manifest's folder), `source` and `target`, and may
//! give `id` (default: the row's line number in the file) and any edit parameter by its flag's
//! long name with underscores (`seed`, `steps`, `mask_threshold`, `mask`, ...). A row that cannot
//! be read is kept with its error, so that a run records it and goes on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::diffedit::engine::PictureEdit;
use crate::diffedit::fields::{self, EditOptions, Fields};
use crate::diffedit::EditParams;
use crate::error::{Error, Result};

/// The keys a row may carry besides the edit's parameters and options ([`fields::PARAM_KEYS`],
/// [`fields::OPTION_KEYS`]).
pub const ROW_KEYS: &[&str] = &["id", "image", "source", "target", "mask", "size"];

/// Every key a row may carry.
pub fn known_keys() -> Vec<&'static str> {
    [ROW_KEYS, fields::PARAM_KEYS, fields::OPTION_KEYS].concat()
}

/// One row as read: where it is, its id, and its fields (or why it cannot be used).
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line in the manifest.
    pub line: usize,
    pub id: String,
    /// The fields as given, or the message saying why the row is unusable.
    pub fields: std::result::Result<Map<String, Value>, String>,
}

/// What a row asks for, its values resolved against the command line's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSpec {
    pub image: PathBuf,
    pub source: String,
    pub target: String,
    pub settings: RowSettings,
}

/// The manifest's rows, in file order.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub rows: Vec<Row>,
}

impl Manifest {
    /// Reads a manifest: CSV when the file ends in `.csv`, else JSON Lines. A file that cannot be
    /// read, or a CSV without a usable header, is an error; a bad row is a row with an error.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let is_csv = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let mut rows = if is_csv { read_csv(path, &text)? } else { read_jsonl(&text) };
        mark_duplicates(&mut rows);
        if rows.is_empty() {
            return Err(Error::config(path, "the manifest has no rows"));
        }
        Ok(Self { path: path.to_path_buf(), rows })
    }

    /// The folder image and mask paths are relative to.
    pub fn base_dir(&self) -> PathBuf {
        // The current folder stays implicit, so messages name `nope.png`, not `./nope.png`.
        self.path.parent().map(Path::to_path_buf).unwrap_or_default()
    }
}

fn read_jsonl(text: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let fields = match serde_json::from_str::<Value>(raw) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(format!("line {line}: a row must be a JSON object")),
            Err(e) => Err(format!("line {line}: not valid JSON: {e}")),
        };
        rows.push(row(line, fields));
    }
    rows
}

fn read_csv(path: &Path, text: &str) -> Result<Vec<Row>> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| Error::config(path, format!("cannot read the CSV header: {e}")))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    for required in ["image", "source", "target"] {
        if !header.iter().any(|h| h == required) {
            return Err(Error::config(path, format!("the CSV header has no `{required}` column (header: {header:?})")));
        }
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let (line, fields) = match record {
            Ok(r) => {
                let line = r.position().map(|p| p.line() as usize).unwrap_or(0);
                if r.iter().all(|v| v.trim().is_empty()) {
                    continue;
                }
                let fields = if r.len() != header.len() {
                    Err(format!("line {line}: {} values for {} columns", r.len(), header.len()))
                } else {
                    // Empty cells are left out: the command line's default applies.
                    Ok(header
                        .iter()
                        .zip(r.iter())
                        .filter(|(_, v)| !v.trim().is_empty())
                        .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                        .collect())
                };
                (line, fields)
            }
            Err(e) => {
                let line = e.position().map(|p| p.line() as usize).unwrap_or(0);
                (line, Err(format!("line {line}: {e}")))
            }
        };
        rows.push(row(line, fields));
    }
    Ok(rows)
}

/// A row's id: its `id` field when usable, else its line number.
fn row(line: usize, fields: std::result::Result<Map<String, Value>, String>) -> Row {
    let given = fields.as_ref().ok().and_then(|f| f.get("id")).map(|v| match v {
        Value::String(s) => s.trim().to_string(),
        other => other.to_string(),
    });
    let id = given.clone().unwrap_or_else(|| line.to_string());
    let fields = match (fields, given) {
        (Ok(_), Some(g)) if !valid_id(&g) => {
            Err(format!("id `{g}` cannot name files: use letters, digits, '.', '_' and '-' (not first), at most 100"))
        }
        (f, _) => f,
    };
    // An unusable id still needs a usable name for the results: fall back to the line.
    let id = if valid_id(&id) { id } else { line.to_string() };
    Row { line, id, fields }
}

/// Ids become file names: letters, digits, `.`, `_`, `-`, not starting with `.` or `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && !id.starts_with(['.', '-'])
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn mark_duplicates(rows: &mut [Row]) {
    let mut first: HashMap<String, usize> = HashMap::new();
    for r in rows.iter_mut() {
        match first.get(&r.id) {
            Some(&line) => {
                r.fields = Err(format!("duplicate id `{}` (first on line {line})", r.id));
                // Keep the results apart from the first row's.
                r.id = format!("{}-line{}", r.id, r.line);
            }
            None => {
                first.insert(r.id.clone(), r.line);
            }
        }
    }
}

/// A row's settings; the command line's flags (and the model's settings) give the defaults, as
/// `diffedit edit` would use them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowSettings {
    pub params: EditParams,
    /// A mask picture to decode with (none: DiffEdit's own).
    pub mask: Option<PathBuf>,
    pub size: Option<(usize, usize)>,
    pub options: EditOptions,
}

impl RowSpec {
    /// The edit this row asks for (its mask picture read separately).
    pub fn picture_edit(&self) -> PictureEdit {
        let s = &self.settings;
        PictureEdit { size: s.size, ..PictureEdit::new(&self.source, &self.target, s.params.clone()) }
            .with_options(&s.options)
    }
}

impl Row {
    /// The row resolved against `defaults`, paths relative to `base`; errors name the field.
    pub fn spec(&self, defaults: &RowSettings, base: &Path) -> std::result::Result<RowSpec, String> {
        let fields = self.fields.as_ref().map_err(Clone::clone)?;
        let f = Fields(fields);
        f.only(&known_keys())?;
        let required = |key: &str| -> std::result::Result<String, String> {
            f.text(key)?.ok_or_else(|| format!("the row has no `{key}`"))
        };
        let image = base.join(required("image")?);
        let source = required("source")?;
        let target = required("target")?;
        let params = f.edit_params(&defaults.params).map_err(|e| flags_as_keys(&e))?;
        let size = match f.text("size")? {
            Some(s) => Some(crate::image_io::parse_size(&s).map_err(|e| flags_as_keys(&e.to_string()))?),
            None => defaults.size,
        };
        let options = f.edit_options(&defaults.options)?;
        let mask = f.text("mask")?.map(|m| base.join(m)).or_else(|| defaults.mask.clone());
        let spec = RowSpec { image, source, target, settings: RowSettings { params, mask, size, options } };
        spec.picture_edit().check().map_err(|e| flags_as_keys(&e.to_string()))?;
        Ok(spec)
    }
}

/// A message naming command-line flags (`--mask-threshold`) rewritten with the manifest's keys
/// (`mask_threshold`).
pub fn flags_as_keys(msg: &str) -> String {
    fields::flags_as_keys(msg, &known_keys())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> RowSettings {
        RowSettings::default()
    }

    #[test]
    fn jsonl_rows_ids_and_errors() {
        let text = "{\"image\": \"a.png\", \"source\": \"s\", \"target\": \"t\"}\n\n\
                    {\"id\": \"x\", \"image\": \"b.png\", \"source\": \"s\", \"target\": \"t\", \"mask_threshold\": 0.3, \"seed\": 4}\n\
                    not json\n\
                    {\"id\": \"x\", \"image\": \"c.png\", \"source\": \"s\", \"target\": \"t\"}\n\
                    {\"id\": \"../up\", \"image\": \"c.png\", \"source\": \"s\", \"target\": \"t\"}\n";
        let mut rows = read_jsonl(text);
        mark_duplicates(&mut rows);
        assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["1", "x", "4", "x-line5", "6"]);
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3, 4, 5, 6]);
        let base = Path::new("/data");
        let spec = rows[1].spec(&defaults(), base).unwrap();
        assert_eq!(spec.image, PathBuf::from("/data/b.png"));
        assert_eq!(
            (spec.settings.params.mask_threshold, spec.settings.params.seed, spec.settings.params.steps),
            (0.3, 4, 50)
        );
        assert!(rows[2].spec(&defaults(), base).unwrap_err().starts_with("line 4: not valid JSON"));
        assert_eq!(rows[3].spec(&defaults(), base).unwrap_err(), "duplicate id `x` (first on line 3)");
        assert!(rows[4].spec(&defaults(), base).unwrap_err().starts_with("id `../up` cannot name files"));
    }

    #[test]
    fn bad_values_name_their_field() {
        let row = |json: &str| read_jsonl(json).remove(0).spec(&defaults(), Path::new(".")).unwrap_err();
        assert_eq!(
            row(r#"{"image": "a.png", "source": "s", "target": "t", "mask_threshold": 1.5}"#),
            "mask_threshold must be in [0, 1], got 1.5"
        );
        assert_eq!(
            row(r#"{"image": "a.png", "source": "s", "target": "t", "steps": 2.5}"#),
            "`steps` must be a whole number >= 0, got 2.5"
        );
        assert_eq!(
            row(r#"{"image": "a.png", "source": "", "target": "t"}"#),
            "source prompt is empty: describe the picture as it is"
        );
        assert_eq!(row(r#"{"image": "a.png", "target": "t"}"#), "the row has no `source`");
        assert!(row(r#"{"image": "a.png", "source": "s", "target": "t", "treshold": 1}"#)
            .starts_with("unknown field `treshold`"));
        assert_eq!(
            row(r#"{"image": "a.png", "source": "s", "target": "t", "alignment": "loose"}"#),
            "alignment must be `exact` or `notebook`, got `loose`"
        );
    }

    #[test]
    fn csv_with_header_and_empty_cells() {
        let text = "id,image,source,target,guidance,keep_background\n\
                    a,p.png,s,t,3.5,true\n\
                    ,q.png,s,t,,\n\
                    c,r.png,s\n";
        let rows = read_csv(Path::new("m.csv"), text).unwrap();
        assert_eq!(rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "3", "4"]);
        let a = rows[0].spec(&defaults(), Path::new("dir")).unwrap();
        assert_eq!(
            (a.settings.params.guidance, a.settings.options.keep_background, a.image.clone()),
            (3.5, true, PathBuf::from("dir/p.png"))
        );
        let b = rows[1].spec(&defaults(), Path::new("dir")).unwrap();
        assert_eq!(b.settings.params.guidance, 7.5);
        assert_eq!(rows[2].spec(&defaults(), Path::new("dir")).unwrap_err(), "line 4: 3 values for 6 columns");
        let err = read_csv(Path::new("m.csv"), "picture,source,target\n").unwrap_err().to_string();
        assert!(err.contains("no `image` column"), "{err}");
    }
}
