//! The chart's Grafana dashboards (`charts/postgres-operator/files/dashboards`): each a
//! well-formed dashboard (keys, unique ids, a layout on Grafana's 24-column grid, every
//! query on the `${datasource}` variable), every query valid PromQL for `promtool`, every
//! metric it names exported by an instance or the operator, every label it filters,
//! groups or matches by carried by the series it applies to, and every query scoped to
//! the `$namespace` and `$cluster` chosen, the cluster derived as the alerts derive it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;
use support::metric_names::{self, PREFIXES, TARGET_LABELS};
use support::validators::promtool;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const FILES: [&str; 4] = [
    "postgres-backups.json",
    "postgres-databases.json",
    "postgres-overview.json",
    "postgres-replication.json",
];

/// Every dashboard file, by name, in name order.
fn dashboards() -> Vec<(String, Value)> {
    let dir = repo().join("charts/postgres-operator/files/dashboards");
    let mut files: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
            (name, value)
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, FILES);
    files
}

/// A query of a dashboard: a panel's target, or a template variable's.
struct Query {
    /// `panel 3 "Title" A` or `variable cluster`.
    place: String,
    expr: String,
}

fn panels(dashboard: &Value) -> &Vec<Value> {
    dashboard["panels"].as_array().unwrap()
}

fn variables(dashboard: &Value) -> &Vec<Value> {
    dashboard["templating"]["list"].as_array().unwrap()
}

/// A query variable's query: a string, or the `query` of an object (Grafana 10+).
fn variable_query(variable: &Value) -> &str {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
        .unwrap_or_else(|| panic!("variable {}: no query", variable["name"]))
}

/// `label_values(<selector>, <label>)` split in its selector and label.
fn label_values(query: &str) -> (&str, &str) {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(selector, label): {query}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .unwrap_or_else(|| panic!("label_values without a label: {query}"));
    (selector.trim(), label.trim())
}

/// Every panel target's expression.
fn panel_queries(dashboard: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(Query {
                place: format!(
                    "panel {} {} {}",
                    panel["id"], panel["title"], target["refId"]
                ),
                expr: target["expr"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    queries
}

/// The selector of every query variable's `label_values`, as a PromQL expression.
fn variable_queries(dashboard: &Value) -> Vec<(Query, String)> {
    variables(dashboard)
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let (selector, label) = label_values(variable_query(v));
            (
                Query {
                    place: format!("variable {}", v["name"].as_str().unwrap()),
                    expr: selector.to_string(),
                },
                label.to_string(),
            )
        })
        .collect()
}

/// Grafana's own variables a query may use.
const BUILTIN_VARIABLES: [&str; 3] = ["__rate_interval", "__range", "__interval"];

/// The text with each `$name` / `${name}` replaced by a value of that variable, for
/// Prometheus to read it; a variable the dashboard does not define is an error.
fn substitute(text: &str, defined: &BTreeSet<String>) -> Result<String, String> {
    let sample = |name: &str| -> Option<&str> {
        match name {
            "__rate_interval" => Some("5m"),
            "__range" => Some("6h"),
            "__interval" => Some("1m"),
            "namespace" => Some("default"),
            "cluster" => Some("db"),
            "database" => Some("app"),
            _ => None,
        }
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or(format!("unclosed ${{ in {text}"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if !(defined.contains(name) || BUILTIN_VARIABLES.contains(&name)) {
            return Err(format!("${name} is no variable of the dashboard: {text}"));
        }
        out.push_str(sample(name).ok_or(format!("no sample value for ${name}"))?);
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

fn defined_variables(dashboard: &Value) -> BTreeSet<String> {
    variables(dashboard)
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

// --- A PromQL reader, enough to follow the labels of each (sub)expression ---------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num,
    /// `[5m]`, `[$__rate_interval]`, `[1h:5m]`: labels pass through unchanged.
    Range,
    Op(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && "eE".contains(chars[i]) {
                i += 1;
                if i < chars.len() && "+-".contains(chars[i]) {
                    i += 1;
                }
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            toks.push(Tok::Num);
        } else if "\"'`".contains(c) {
            let mut value = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unclosed string in {text}")),
                    Some('\\') if c != '`' => {
                        value.extend(chars.get(i + 1));
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&other) => {
                        value.push(other);
                        i += 1;
                    }
                }
            }
            toks.push(Tok::Str(value));
        } else if c == '[' {
            let end = chars[i..]
                .iter()
                .position(|&c| c == ']')
                .ok_or(format!("unclosed [ in {text}"))?;
            i += end + 1;
            toks.push(Tok::Range);
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            if ["==", "!=", "<=", ">=", "=~", "!~"].contains(&two.as_str()) {
                toks.push(Tok::Op(two));
                i += 2;
                continue;
            }
            toks.push(match c {
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                '{' => Tok::LBrace,
                '}' => Tok::RBrace,
                ',' => Tok::Comma,
                '=' | '<' | '>' | '+' | '-' | '*' | '/' | '%' | '^' => Tok::Op(c.to_string()),
                other => return Err(format!("unexpected {other:?} in {text}")),
            });
            i += 1;
        }
    }
    Ok(toks)
}

/// What an expression yields: its labels when it is a vector of our metrics.
#[derive(Clone, Debug)]
enum Val {
    Scalar,
    Str(String),
    Vector(BTreeSet<String>),
    /// A vector of metrics not ours (labels unknown): nothing is checked on it.
    Unknown,
}

/// A selector of one of our metrics: its name and its matchers (label, op, value).
type Selector = (String, Vec<(String, String, String)>);

/// What reading an expression found.
struct Analysis {
    result: Val,
    selectors: Vec<Selector>,
    /// Labels used where they are absent.
    problems: Vec<String>,
    /// Uses of a label checked against the series they apply to.
    checked: usize,
}

const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

struct Reader<'a> {
    toks: Vec<Tok>,
    pos: usize,
    known: &'a BTreeMap<String, BTreeSet<String>>,
    selectors: Vec<Selector>,
    problems: Vec<String>,
    checked: usize,
}

fn precedence(op: &str) -> Option<(u8, bool)> {
    Some(match op {
        "or" => (1, false),
        "and" | "unless" => (2, false),
        "==" | "!=" | "<" | ">" | "<=" | ">=" => (3, false),
        "+" | "-" => (4, false),
        "*" | "/" | "%" | "atan2" => (5, false),
        "^" => (6, true),
        _ => return None,
    })
}

impl Reader<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Result<Tok, String> {
        let tok = self.toks.get(self.pos).cloned().ok_or("unexpected end")?;
        self.pos += 1;
        Ok(tok)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        self.eat(&Tok::Ident(word.to_string()))
    }

    fn expect(&mut self, tok: &Tok) -> Result<(), String> {
        let found = self.next()?;
        if &found == tok {
            Ok(())
        } else {
            Err(format!("expected {tok:?}, found {found:?}"))
        }
    }

    /// Checks that `label` is on what `val` yields.
    fn require(&mut self, label: &str, val: &Val, context: &str) {
        if let Val::Vector(labels) = val {
            self.checked += 1;
            if !labels.contains(label) {
                self.problems.push(format!(
                    "{context}: no label {label} there (only {labels:?})"
                ));
            }
        }
    }

    fn label_list(&mut self) -> Result<Vec<String>, String> {
        self.expect(&Tok::LParen)?;
        let mut labels = Vec::new();
        loop {
            match self.next()? {
                Tok::RParen => return Ok(labels),
                Tok::Ident(label) => labels.push(label),
                other => return Err(format!("expected a label, found {other:?}")),
            }
            if !self.eat(&Tok::Comma) {
                self.expect(&Tok::RParen)?;
                return Ok(labels);
            }
        }
    }

    fn peek_binary(&self) -> Option<String> {
        match self.peek()? {
            Tok::Op(op) if precedence(op).is_some() => Some(op.clone()),
            Tok::Ident(word) if precedence(word).is_some() => Some(word.clone()),
            _ => None,
        }
    }

    fn expr(&mut self, min: u8) -> Result<Val, String> {
        let mut lhs = self.unary()?;
        while let Some(op) = self.peek_binary() {
            let (prec, right) = precedence(&op).unwrap();
            if prec < min {
                break;
            }
            self.pos += 1;
            self.eat_word("bool");
            let matching = if self.eat_word("on") {
                Some((true, self.label_list()?))
            } else if self.eat_word("ignoring") {
                Some((false, self.label_list()?))
            } else {
                None
            };
            let group = if self.eat_word("group_left") || self.eat_word("group_right") {
                let left = self.toks[self.pos - 1] == Tok::Ident("group_left".into());
                let include = if self.peek() == Some(&Tok::LParen) {
                    self.label_list()?
                } else {
                    Vec::new()
                };
                Some((left, include))
            } else {
                None
            };
            let rhs = self.expr(if right { prec } else { prec + 1 })?;
            lhs = self.binary(&op, lhs, rhs, matching, group);
        }
        Ok(lhs)
    }

    fn binary(
        &mut self,
        op: &str,
        lhs: Val,
        rhs: Val,
        matching: Option<(bool, Vec<String>)>,
        group: Option<(bool, Vec<String>)>,
    ) -> Val {
        if let Some((true, labels)) = &matching {
            for label in labels {
                self.require(label, &lhs, &format!("left of {op} on ({label})"));
                self.require(label, &rhs, &format!("right of {op} on ({label})"));
            }
        }
        if let Some((left, include)) = &group {
            let other = if *left { &rhs } else { &lhs };
            for label in include {
                self.require(label, other, &format!("{op} group_* ({label})"));
            }
        }
        match (lhs, rhs) {
            (Val::Vector(l), Val::Vector(r)) => Val::Vector(match (op, group, matching) {
                ("and" | "unless", _, _) => l,
                ("or", _, _) => l.union(&r).cloned().collect(),
                (_, Some((true, include)), _) => l.into_iter().chain(include).collect(),
                (_, Some((false, include)), _) => r.into_iter().chain(include).collect(),
                (_, None, Some((true, labels))) => labels.into_iter().collect(),
                (_, None, Some((false, labels))) => {
                    l.into_iter().filter(|x| !labels.contains(x)).collect()
                }
                (_, None, None) => l,
            }),
            (Val::Unknown, _) | (_, Val::Unknown) => Val::Unknown,
            (Val::Vector(v), _) | (_, Val::Vector(v)) => Val::Vector(v),
            _ => Val::Scalar,
        }
    }

    fn unary(&mut self) -> Result<Val, String> {
        if matches!(self.peek(), Some(Tok::Op(op)) if op == "-" || op == "+") {
            self.pos += 1;
            return self.unary();
        }
        let val = self.primary()?;
        while self.eat(&Tok::Range) {}
        Ok(val)
    }

    fn primary(&mut self) -> Result<Val, String> {
        match self.next()? {
            Tok::Num => Ok(Val::Scalar),
            Tok::Str(s) => Ok(Val::Str(s)),
            Tok::LParen => {
                let val = self.expr(0)?;
                self.expect(&Tok::RParen)?;
                Ok(val)
            }
            Tok::LBrace => {
                self.pos -= 1;
                self.matchers()?;
                Ok(Val::Unknown)
            }
            Tok::Ident(name) if AGGREGATIONS.contains(&name.as_str()) => self.aggregation(&name),
            Tok::Ident(name) if self.peek() == Some(&Tok::LParen) => self.call(&name),
            Tok::Ident(name) => self.selector(name),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn args(&mut self) -> Result<Vec<Val>, String> {
        self.expect(&Tok::LParen)?;
        let mut args = Vec::new();
        if self.eat(&Tok::RParen) {
            return Ok(args);
        }
        loop {
            args.push(self.expr(0)?);
            if !self.eat(&Tok::Comma) {
                self.expect(&Tok::RParen)?;
                return Ok(args);
            }
        }
    }

    fn grouping(&mut self) -> Result<Option<(bool, Vec<String>)>, String> {
        Ok(if self.eat_word("by") {
            Some((true, self.label_list()?))
        } else if self.eat_word("without") {
            Some((false, self.label_list()?))
        } else {
            None
        })
    }

    fn aggregation(&mut self, name: &str) -> Result<Val, String> {
        let mut grouping = self.grouping()?;
        let args = self.args()?;
        if grouping.is_none() {
            grouping = self.grouping()?;
        }
        let arg = args.last().cloned().unwrap_or(Val::Unknown);
        let keeps_labels = ["topk", "bottomk"].contains(&name);
        Ok(match grouping {
            Some((true, labels)) => {
                for label in &labels {
                    self.require(label, &arg, &format!("{name} by ({label})"));
                }
                if keeps_labels {
                    arg
                } else {
                    Val::Vector(labels.into_iter().collect())
                }
            }
            Some((false, labels)) => match arg {
                Val::Vector(v) => {
                    Val::Vector(v.into_iter().filter(|l| !labels.contains(l)).collect())
                }
                other => other,
            },
            None if keeps_labels => arg,
            None => Val::Vector(BTreeSet::new()),
        })
    }

    fn call(&mut self, name: &str) -> Result<Val, String> {
        let args = self.args()?;
        let string = |i: usize| match args.get(i) {
            Some(Val::Str(s)) => s.clone(),
            _ => String::new(),
        };
        Ok(match name {
            "time" | "scalar" | "pi" => Val::Scalar,
            "vector" => Val::Vector(BTreeSet::new()),
            "absent" | "absent_over_time" => Val::Unknown,
            "histogram_quantile" => {
                let v = args.get(1).cloned().unwrap_or(Val::Unknown);
                self.require("le", &v, "histogram_quantile");
                match v {
                    Val::Vector(v) => Val::Vector(v.into_iter().filter(|l| l != "le").collect()),
                    other => other,
                }
            }
            "label_replace" => {
                let v = args.first().cloned().unwrap_or(Val::Unknown);
                let source = string(3);
                if !source.is_empty() {
                    self.require(&source, &v, "label_replace");
                }
                match v {
                    Val::Vector(mut v) => {
                        v.insert(string(1));
                        Val::Vector(v)
                    }
                    other => other,
                }
            }
            _ => args
                .into_iter()
                .find(|a| matches!(a, Val::Vector(_) | Val::Unknown))
                .unwrap_or(Val::Scalar),
        })
    }

    fn matchers(&mut self) -> Result<Vec<(String, String, String)>, String> {
        self.expect(&Tok::LBrace)?;
        let mut matchers = Vec::new();
        loop {
            let label = match self.next()? {
                Tok::RBrace => return Ok(matchers),
                Tok::Ident(label) => label,
                other => return Err(format!("expected a label, found {other:?}")),
            };
            let op = match self.next()? {
                Tok::Op(op) if ["=", "!=", "=~", "!~"].contains(&op.as_str()) => op,
                other => return Err(format!("expected a matcher, found {other:?}")),
            };
            let Tok::Str(value) = self.next()? else {
                return Err(format!("{label}{op}: expected a string"));
            };
            matchers.push((label, op, value));
            if !self.eat(&Tok::Comma) {
                self.expect(&Tok::RBrace)?;
                return Ok(matchers);
            }
        }
    }

    fn selector(&mut self, name: String) -> Result<Val, String> {
        let matchers = if self.peek() == Some(&Tok::LBrace) {
            self.matchers()?
        } else {
            Vec::new()
        };
        if !PREFIXES.iter().any(|p| name.starts_with(p)) {
            return Ok(Val::Unknown);
        }
        let Some(own) = self.known.get(&name) else {
            self.problems.push(format!("{name} is exported by nothing"));
            return Ok(Val::Unknown);
        };
        let labels: BTreeSet<String> = own
            .iter()
            .cloned()
            .chain(TARGET_LABELS.iter().map(|l| l.to_string()))
            .collect();
        let val = Val::Vector(labels);
        for (label, _, _) in &matchers {
            if label != "__name__" {
                self.require(label, &val, &format!("{name}{{{label}=...}}"));
            }
        }
        self.selectors.push((name, matchers));
        Ok(val)
    }
}

/// Reads a PromQL expression, following the labels of each part.
fn analyse(expr: &str, known: &BTreeMap<String, BTreeSet<String>>) -> Result<Analysis, String> {
    let mut reader = Reader {
        toks: lex(expr)?,
        pos: 0,
        known,
        selectors: Vec::new(),
        problems: Vec::new(),
        checked: 0,
    };
    let result = reader.expr(0).map_err(|e| format!("{e} in {expr}"))?;
    if reader.pos != reader.toks.len() {
        return Err(format!("unread {:?} in {expr}", &reader.toks[reader.pos..]));
    }
    Ok(Analysis {
        result,
        selectors: reader.selectors,
        problems: reader.problems,
        checked: reader.checked,
    })
}

/// The problems of the labels a query uses (a variable's query also its label).
fn label_problems(
    query: &str,
    label: Option<&str>,
    known: &BTreeMap<String, BTreeSet<String>>,
) -> Result<(Vec<String>, usize), String> {
    let mut analysis = analyse(query, known)?;
    if let Some(label) = label {
        match &analysis.result {
            Val::Vector(labels) => {
                analysis.checked += 1;
                if !labels.contains(label) {
                    analysis
                        .problems
                        .push(format!("label_values: no label {label} (only {labels:?})"));
                }
            }
            other => analysis.problems.push(format!("label_values of {other:?}")),
        }
    }
    Ok((analysis.problems, analysis.checked))
}

// --- The tests ------------------------------------------------------------------------

const PANEL_TYPES: [&str; 7] = [
    "stat",
    "timeseries",
    "table",
    "gauge",
    "bargauge",
    "text",
    "row",
];

fn is_datasource_variable(datasource: &Value) -> bool {
    datasource["uid"] == "${datasource}"
        && (datasource["type"].is_null() || datasource["type"] == "prometheus")
}

#[test]
fn every_dashboard_is_a_well_formed_grafana_dashboard() {
    let mut uids = BTreeSet::new();
    for (file, dashboard) in dashboards() {
        for key in ["title", "uid"] {
            assert!(
                dashboard[key].as_str().is_some_and(|t| !t.is_empty()),
                "{file}: no {key}"
            );
        }
        let uid = dashboard["uid"].as_str().unwrap();
        assert!(
            uid.len() <= 40,
            "{file}: Grafana takes uids up to 40 characters"
        );
        assert!(uids.insert(uid.to_string()), "{file}: uid {uid} is taken");
        assert!(
            dashboard["schemaVersion"].is_u64(),
            "{file}: schemaVersion is no number"
        );
        assert_eq!(dashboard["schemaVersion"], 39, "{file}");
        assert!(
            dashboard["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&Value::from("postgres-operator"))),
            "{file}: not tagged postgres-operator"
        );
        assert!(dashboard["panels"].is_array(), "{file}: no panels");
        assert!(
            dashboard["templating"]["list"].is_array(),
            "{file}: no templating.list"
        );

        // The variables: the data source, then namespace and cluster queried from it.
        let mut names = BTreeSet::new();
        for variable in variables(&dashboard) {
            let name = variable["name"].as_str().unwrap_or_default();
            assert!(names.insert(name), "{file}: variable {name} twice");
            match variable["type"].as_str() {
                Some("datasource") => assert_eq!(variable["query"], "prometheus", "{file}"),
                Some("query") => {
                    assert!(
                        is_datasource_variable(&variable["datasource"]),
                        "{file}: variable {name} is not on ${{datasource}}"
                    );
                    label_values(variable_query(variable));
                }
                other => panic!("{file}: variable {name} of type {other:?}"),
            }
        }
        assert_eq!(variables(&dashboard)[0]["name"], "datasource", "{file}");
        assert_eq!(variables(&dashboard)[0]["type"], "datasource", "{file}");
        for name in ["namespace", "cluster"] {
            assert!(names.contains(name), "{file}: no variable {name}");
        }

        // The panels: unique ids, known types, on the grid without overlapping.
        let mut ids = BTreeSet::new();
        let mut cells: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        assert!(!panels(&dashboard).is_empty(), "{file}: no panels");
        for panel in panels(&dashboard) {
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: a panel without an integer id"));
            assert!(ids.insert(id), "{file}: panel id {id} twice");
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(!title.is_empty(), "{file}: panel {id} has no title");
            let kind = panel["type"].as_str().unwrap_or_default();
            assert!(
                PANEL_TYPES.contains(&kind),
                "{file}: panel {id} of type {kind:?}"
            );
            let grid = &panel["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
                grid[k]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{file}: panel {id}: gridPos.{k} is no integer"))
            });
            assert!(w > 0 && h > 0, "{file}: panel {id} is empty");
            assert!(x + w <= 24, "{file}: panel {id} ends past column 24");
            for column in x..x + w {
                for row in y..y + h {
                    if let Some(other) = cells.insert((column, row), id) {
                        panic!("{file}: panels {other} and {id} overlap");
                    }
                }
            }
            if kind == "row" || kind == "text" {
                continue;
            }
            assert!(
                is_datasource_variable(&panel["datasource"]),
                "{file}: panel {id} is not on ${{datasource}}: {}",
                panel["datasource"]
            );
            let targets = panel["targets"].as_array();
            assert!(
                targets.is_some_and(|t| !t.is_empty()),
                "{file}: panel {id} has no targets"
            );
            let mut refs = BTreeSet::new();
            for target in targets.unwrap() {
                let reference = target["refId"].as_str().unwrap_or_default();
                assert!(
                    !reference.is_empty(),
                    "{file}: panel {id}: a target has no refId"
                );
                assert!(
                    refs.insert(reference),
                    "{file}: panel {id}: refId {reference} twice"
                );
                assert!(
                    target["expr"]
                        .as_str()
                        .is_some_and(|e| !e.trim().is_empty()),
                    "{file}: panel {id} {reference}: no expr"
                );
                if !target["datasource"].is_null() {
                    assert!(
                        is_datasource_variable(&target["datasource"]),
                        "{file}: panel {id} {reference} is not on ${{datasource}}"
                    );
                }
            }
        }

        // Every variable a query uses is the dashboard's (or Grafana's).
        let defined = defined_variables(&dashboard);
        let queries = panel_queries(&dashboard).into_iter().chain(
            variable_queries(&dashboard)
                .into_iter()
                .map(|(query, _)| query),
        );
        for query in queries {
            substitute(&query.expr, &defined)
                .unwrap_or_else(|e| panic!("{file}: {}: {e}", query.place));
        }
    }
}

#[test]
fn every_metric_the_dashboards_name_is_exported() {
    let known = metric_names::known_labels();
    let mut all = BTreeSet::new();
    let mut occurrences = 0;
    for (file, dashboard) in dashboards() {
        let mut distinct = BTreeSet::new();
        let queries = panel_queries(&dashboard).into_iter().chain(
            variable_queries(&dashboard)
                .into_iter()
                .map(|(query, _)| query),
        );
        for query in queries {
            let named = metric_names::named(&query.expr);
            assert!(
                !named.is_empty(),
                "{file}: {}: names no metric of ours",
                query.place
            );
            for word in named {
                occurrences += 1;
                assert!(
                    known.contains_key(word),
                    "{file}: {}: {word} is exported by nothing",
                    query.place
                );
                distinct.insert(word.to_string());
            }
        }
        println!(
            "{file}: {} panels, {} distinct metrics: {distinct:?}",
            panels(&dashboard).len(),
            distinct.len()
        );
        assert!(distinct.len() >= 4, "{file}: only {distinct:?}");
        all.extend(distinct);
    }
    println!("{} distinct metrics in {occurrences} uses", all.len());
    assert!(all.len() >= 40, "{all:?}");
    assert!(occurrences >= 100, "{occurrences}");
}

#[test]
fn every_label_the_dashboards_use_is_on_its_metric() {
    let known = metric_names::known_labels();
    let mut checked = 0;
    for (file, dashboard) in dashboards() {
        let queries = panel_queries(&dashboard)
            .into_iter()
            .map(|query| (query, None))
            .chain(
                variable_queries(&dashboard)
                    .into_iter()
                    .map(|(query, label)| (query, Some(label))),
            );
        for (query, label) in queries {
            let (problems, count) = label_problems(&query.expr, label.as_deref(), &known)
                .unwrap_or_else(|e| panic!("{file}: {}: {e}", query.place));
            assert!(
                problems.is_empty(),
                "{file}: {}: {}\n{}",
                query.place,
                problems.join("; "),
                query.expr
            );
            checked += count;
        }
    }
    println!("{checked} uses of a label checked");
    assert!(checked >= 250, "{checked}");
}

/// The cluster of an instance is in its pod's name, as the alerts' `label_replace` reads
/// it: every query of an instance metric selects `namespace="$namespace"` and
/// `pod=~"<that pattern with $cluster>"`, every query of an operator family by cluster
/// `namespace="$namespace"` and `cluster=~"$cluster"`, and with a `database` variable
/// every query of a metric by database `datname=~"$database"`.
#[test]
fn every_query_is_scoped_to_the_namespace_and_cluster_chosen() {
    let alerts =
        std::fs::read_to_string(repo().join("charts/postgres-operator/files/alerts.yaml")).unwrap();
    let patterns: BTreeSet<&str> = alerts
        .split("\"cluster\", \"$1\", \"pod\", \"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(
        patterns.len(),
        1,
        "the alerts derive the cluster in several ways"
    );
    let pattern = *patterns.first().unwrap();
    assert_eq!(pattern, "postgres-(.+)-[0-9]+");
    let pod = pattern.replace("(.+)", "$cluster");

    let known = metric_names::known_labels();
    let mut scoped = 0;
    for (file, dashboard) in dashboards() {
        let by_database = defined_variables(&dashboard).contains("database");
        for variable in variables(&dashboard)
            .iter()
            .filter(|v| v["type"] == "query")
        {
            let name = variable["name"].as_str().unwrap();
            let (selector, label) = label_values(variable_query(variable));
            if name == "cluster" && label == "pod" {
                assert_eq!(variable["regex"], format!("/^{pattern}$/"), "{file}");
            } else if name == "cluster" {
                assert_eq!(label, "cluster", "{file}");
                assert!(selector.starts_with("postgres_operator_"), "{file}");
            }
        }
        for query in panel_queries(&dashboard) {
            let analysis = analyse(&query.expr, &known).unwrap();
            for (metric, matchers) in analysis.selectors {
                let has = |label: &str, op: &str, value: &str| {
                    matchers
                        .iter()
                        .any(|(l, o, v)| l == label && o == op && v == value)
                };
                let place = format!("{file}: {}: {metric}", query.place);
                let labels = &known[&metric];
                if metric.starts_with("postgres_operator_") {
                    if labels.contains("cluster") {
                        assert!(has("namespace", "=", "$namespace"), "{place}");
                        assert!(has("cluster", "=~", "$cluster"), "{place}");
                        scoped += 1;
                    } else {
                        // The operator's own: its namespace is the operator's.
                        assert!(matchers.is_empty(), "{place}");
                    }
                } else {
                    assert!(has("namespace", "=", "$namespace"), "{place}");
                    assert!(has("pod", "=~", &pod), "{place}: not pod=~\"{pod}\"");
                    scoped += 1;
                }
                if by_database && labels.contains("datname") {
                    assert!(has("datname", "=~", "$database"), "{place}");
                }
            }
        }
    }
    assert!(scoped >= 80, "{scoped}");
}

/// Each panel query and each variable's selector, with the variables replaced by values,
/// as a recording rule: `promtool check rules` parses them as Prometheus does.
#[test]
fn promtool_accepts_every_query() {
    let mut groups = Vec::new();
    for (file, dashboard) in dashboards() {
        let defined = defined_variables(&dashboard);
        let stem = file.trim_end_matches(".json").replace('-', "_");
        let mut rules = Vec::new();
        let queries = panel_queries(&dashboard).into_iter().chain(
            variable_queries(&dashboard)
                .into_iter()
                .map(|(query, _)| query),
        );
        for (n, query) in queries.enumerate() {
            rules.push(serde_json::json!({
                "record": format!("dashboard:{stem}:query_{n}"),
                "expr": substitute(&query.expr, &defined).unwrap(),
            }));
        }
        groups.push(serde_json::json!({"name": stem, "rules": rules}));
    }
    let rules = serde_json::json!({ "groups": groups });
    promtool_check(&rules).unwrap_or_else(|e| panic!("{e}"));
}

fn promtool_check(rules: &Value) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboards.yaml");
    std::fs::write(&path, serde_yaml::to_string(rules).unwrap()).unwrap();
    let text = promtool(&["check", "rules", "dashboards.yaml"], dir.path())?;
    if text.contains("SUCCESS") {
        Ok(text)
    } else {
        Err(text)
    }
}

/// The checks above fail on the mistakes they are for.
#[test]
fn the_checks_catch_misspelled_metrics_missing_labels_and_bad_syntax() {
    let labels = metric_names::known_labels();
    let problems =
        |expr: &str, label: Option<&str>| label_problems(expr, label, &labels).unwrap().0;

    // A misspelled metric.
    let misspelled = "sum(rate(pg_database_xact_comit_total[5m]))";
    assert!(
        metric_names::named(misspelled)
            .iter()
            .any(|w| !labels.contains_key(*w))
    );
    assert!(!problems(misspelled, None).is_empty());
    assert!(problems("sum(rate(pg_database_xact_commit_total[5m]))", None).is_empty());

    // Labels: a filter, a grouping, a match, a variable's label, each on the wrong metric.
    for (expr, label) in [
        ("pg_up{cluster=\"db\"}", None),
        ("sum by (datname) (pg_locks)", None),
        ("sum(pg_locks) by (standby)", None),
        (
            "max by (pod) (pg_up) / on (namespace, pod) pg_max_connections",
            None,
        ),
        ("postgres_operator_reconciles_total{cluster=\"db\"}", None),
        ("postgres_operator_managed_clusters", Some("cluster")),
        ("pg_up", Some("datname")),
        (
            "histogram_quantile(0.9, sum by (pod) (rate(postgres_operator_reconcile_duration_seconds_bucket[5m])))",
            None,
        ),
        (
            "sum by (pod) (pg_up) and on (namespace) pg_in_recovery",
            None,
        ),
    ] {
        assert!(!problems(expr, label).is_empty(), "{expr} passes");
    }
    for (expr, label) in [
        (
            "pg_connections{namespace=\"ns\", pod=~\"postgres-db-[0-9]+\", datname=~\"app\"}",
            None,
        ),
        (
            "sum by (pod, by) (rate(pg_buffers_written_total[5m]))",
            None,
        ),
        (
            "sum by (namespace, pod) (pg_connections) / on (namespace, pod) pg_max_connections",
            None,
        ),
        (
            "postgres_operator_backup_interval_seconds{namespace=\"ns\"}",
            Some("cluster"),
        ),
        (
            "histogram_quantile(0.9, sum by (le) (rate(postgres_operator_reconcile_duration_seconds_bucket[5m])))",
            None,
        ),
        ("count(pg_in_recovery == 0) or vector(0)", None),
    ] {
        assert_eq!(problems(expr, label), Vec::<String>::new(), "{expr}");
    }

    // A variable the dashboard does not define.
    let defined: BTreeSet<String> = ["namespace".to_string()].into();
    assert!(substitute("pg_up{namespace=\"$namespace\"}", &defined).is_ok());
    assert!(substitute("pg_up{namespace=\"$namespcae\"}", &defined).is_err());

    // Bad PromQL.
    let rule = |expr: &str| serde_json::json!({"groups": [{"name": "g", "rules": [{"record": "r", "expr": expr}]}]});
    promtool_check(&rule("sum by (pod) (rate(pg_up[5m]))")).unwrap();
    promtool_check(&rule("sum by (pod) (rate(pg_up[5m])")).unwrap_err();
    promtool_check(&rule("rate(pg_up)")).unwrap_err();
}
