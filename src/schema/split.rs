//! Splits a migration file into statements.
//!
//! Used to run statements one at a time (no-transaction files, MySQL), to number them in
//! errors and to recognise statements that cannot run inside a transaction. The splitter
//! understands quoted strings and identifiers, PostgreSQL dollar quotes and `E''`
//! strings, MySQL backslash escapes, line and block comments (nested in PostgreSQL), and
//! the `BEGIN … END` body of a trigger in SQLite and MySQL.

use super::Dialect;

/// One statement of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement as written, without the closing `;`, comments before it trimmed.
    pub text: String,
    /// Byte offset of `text` in the file.
    pub offset: usize,
    /// 1-based line where the statement starts.
    pub line: usize,
    /// The first words outside comments and quotes, upper-cased, for classification.
    pub words: Vec<String>,
}

impl Statement {
    /// True when the statement starts with `prefix`, compared word by word.
    pub fn starts_with(&self, prefix: &[&str]) -> bool {
        self.words.len() >= prefix.len() && self.words.iter().zip(prefix).all(|(a, b)| a == b)
    }

    pub fn has_word(&self, word: &str) -> bool {
        self.words.iter().any(|w| w == word)
    }
}

/// How many leading words are kept for classification.
const WORDS_KEPT: usize = 12;

pub fn split(sql: &str, dialect: Dialect) -> Vec<Statement> {
    Splitter::new(sql, dialect).run()
}

struct Splitter<'a> {
    sql: &'a str,
    bytes: &'a [u8],
    dialect: Dialect,
    pos: usize,
    statements: Vec<Statement>,
    // The statement being read.
    start: Option<usize>,
    words: Vec<String>,
    in_trigger: bool,
    block_depth: usize,
    previous_word: String,
}

impl<'a> Splitter<'a> {
    fn new(sql: &'a str, dialect: Dialect) -> Self {
        Splitter {
            sql,
            bytes: sql.as_bytes(),
            dialect,
            pos: 0,
            statements: Vec::new(),
            start: None,
            words: Vec::new(),
            in_trigger: false,
            block_depth: 0,
            previous_word: String::new(),
        }
    }

    fn run(mut self) -> Vec<Statement> {
        while self.pos < self.bytes.len() {
            let byte = self.bytes[self.pos];
            let next = self.bytes.get(self.pos + 1).copied();
            match byte {
                b'-' if next == Some(b'-') => self.skip_line(),
                b'#' if self.dialect == Dialect::MySql => self.skip_line(),
                b'/' if next == Some(b'*') => self.skip_block_comment(),
                b'\'' => {
                    let backslashes = self.dialect == Dialect::MySql || self.escape_string_prefix();
                    self.mark_code();
                    self.skip_quoted(b'\'', backslashes);
                }
                b'"' => {
                    self.mark_code();
                    self.skip_quoted(b'"', self.dialect == Dialect::MySql);
                }
                b'`' if self.dialect != Dialect::Postgres => {
                    self.mark_code();
                    self.skip_quoted(b'`', false);
                }
                b'[' if self.dialect == Dialect::Sqlite => {
                    self.mark_code();
                    self.skip_quoted(b']', false);
                }
                b'$' if self.dialect == Dialect::Postgres && self.try_dollar_quote() => {}
                b';' if self.block_depth == 0 => {
                    self.finish(self.pos);
                    self.pos += 1;
                }
                b if b.is_ascii_alphabetic() || b == b'_' => self.word(),
                b if b.is_ascii_whitespace() => self.pos += 1,
                _ => {
                    self.mark_code();
                    self.pos += 1;
                }
            }
        }
        self.finish(self.bytes.len());
        self.statements
    }

    fn mark_code(&mut self) {
        if self.start.is_none() {
            self.start = Some(self.pos);
        }
    }

    /// `E'…'` in PostgreSQL takes backslash escapes.
    fn escape_string_prefix(&self) -> bool {
        self.dialect == Dialect::Postgres
            && self.pos > 0
            && matches!(self.bytes[self.pos - 1], b'E' | b'e')
            && (self.pos < 2 || !is_word_byte(self.bytes[self.pos - 2]))
    }

    fn skip_line(&mut self) {
        while self.pos < self.bytes.len() && self.bytes[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    fn skip_block_comment(&mut self) {
        let nested = self.dialect == Dialect::Postgres;
        let mut depth = 0usize;
        while self.pos < self.bytes.len() {
            if self.bytes[self.pos..].starts_with(b"/*") {
                depth += 1;
                self.pos += 2;
                if !nested && depth > 1 {
                    depth = 1;
                }
            } else if self.bytes[self.pos..].starts_with(b"*/") {
                depth -= 1;
                self.pos += 2;
                if depth == 0 {
                    return;
                }
            } else {
                self.pos += 1;
            }
        }
    }

    fn skip_quoted(&mut self, close: u8, backslash_escapes: bool) {
        self.pos += 1;
        while self.pos < self.bytes.len() {
            let byte = self.bytes[self.pos];
            if backslash_escapes && byte == b'\\' {
                self.pos += 2;
                continue;
            }
            self.pos += 1;
            if byte == close {
                // A doubled quote is an escaped quote, not the end.
                if self.bytes.get(self.pos) == Some(&close) && close != b']' {
                    self.pos += 1;
                    continue;
                }
                return;
            }
        }
    }

    /// `$$ … $$` or `$tag$ … $tag$`; `$1` is a parameter, not a quote.
    fn try_dollar_quote(&mut self) -> bool {
        let rest = &self.sql[self.pos + 1..];
        let tag_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if rest.as_bytes().get(tag_len) != Some(&b'$') {
            return false;
        }
        if rest.as_bytes().first().is_some_and(u8::is_ascii_digit) {
            return false;
        }
        let delimiter = &self.sql[self.pos..self.pos + tag_len + 2];
        self.mark_code();
        let body_start = self.pos + delimiter.len();
        match self.sql[body_start..].find(delimiter) {
            Some(end) => self.pos = body_start + end + delimiter.len(),
            None => self.pos = self.bytes.len(),
        }
        true
    }

    fn word(&mut self) {
        self.mark_code();
        let start = self.pos;
        while self.pos < self.bytes.len() && is_word_byte(self.bytes[self.pos]) {
            self.pos += 1;
        }
        let word = self.sql[start..self.pos].to_ascii_uppercase();
        if self.words.len() < WORDS_KEPT {
            self.words.push(word.clone());
            self.in_trigger = self.dialect != Dialect::Postgres && self.is_create_trigger();
        }
        if self.in_trigger {
            self.track_block(&word);
        }
        self.previous_word = word;
    }

    fn is_create_trigger(&self) -> bool {
        let mut words = self.words.iter().map(String::as_str);
        if words.next() != Some("CREATE") {
            return false;
        }
        let is_modifier =
            |w: &str| matches!(w, "OR" | "REPLACE" | "TEMP" | "TEMPORARY" | "DEFINER");
        words.find(|w| !is_modifier(w)) == Some("TRIGGER")
    }

    fn track_block(&mut self, word: &str) {
        let after_end = self.previous_word == "END";
        match word {
            "BEGIN" | "CASE" => self.block_depth += 1,
            "IF" | "LOOP" | "WHILE" | "REPEAT"
                if self.dialect == Dialect::MySql && !after_end && self.block_depth > 0 =>
            {
                self.block_depth += 1;
            }
            "END" => self.block_depth = self.block_depth.saturating_sub(1),
            _ => {}
        }
    }

    fn finish(&mut self, end: usize) {
        if let Some(start) = self.start.take() {
            let text = self.sql[start..end].trim_end().to_string();
            let line = self.sql[..start].matches('\n').count() + 1;
            self.statements.push(Statement {
                text,
                offset: start,
                line,
                words: std::mem::take(&mut self.words),
            });
        }
        self.words.clear();
        self.in_trigger = false;
        self.block_depth = 0;
        self.previous_word.clear();
    }
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'$'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str, dialect: Dialect) -> Vec<String> {
        split(sql, dialect).into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let sql = "-- leading; comment\nCREATE TABLE a (x TEXT DEFAULT 'a;b');\n\
                   /* block; */ INSERT INTO a VALUES ('it''s; fine');\n-- only a comment;\n";
        assert_eq!(
            texts(sql, Dialect::Postgres),
            [
                "CREATE TABLE a (x TEXT DEFAULT 'a;b')",
                "INSERT INTO a VALUES ('it''s; fine')"
            ]
        );
    }

    #[test]
    fn keeps_dollar_quoted_bodies_whole() {
        let sql = "CREATE FUNCTION f() RETURNS trigger AS $body$\nBEGIN\n  NEW.x := 1; RETURN NEW;\n\
                   END;\n$body$ LANGUAGE plpgsql;\nSELECT $$a;b$$, $1;";
        let statements = split(sql, Dialect::Postgres);
        assert_eq!(statements.len(), 2);
        assert!(statements[0].text.ends_with("LANGUAGE plpgsql"));
        assert_eq!(statements[1].line, 6);
    }

    #[test]
    fn nested_block_comments_in_postgres() {
        let sql = "/* outer /* inner; */ still comment; */ SELECT 1; SELECT 2";
        assert_eq!(texts(sql, Dialect::Postgres), ["SELECT 1", "SELECT 2"]);
    }

    #[test]
    fn escape_strings_and_mysql_backslashes() {
        assert_eq!(
            texts(r"SELECT E'a\';b'; SELECT 'c'", Dialect::Postgres),
            [r"SELECT E'a\';b'", "SELECT 'c'"]
        );
        assert_eq!(
            texts(
                r"INSERT INTO t VALUES ('a\';b'); # note; here",
                Dialect::MySql
            ),
            [r"INSERT INTO t VALUES ('a\';b')"]
        );
    }

    #[test]
    fn sqlite_trigger_body_is_one_statement() {
        let sql = "CREATE TRIGGER touch AFTER UPDATE ON users BEGIN\n\
                   UPDATE users SET updated_at = CASE WHEN 1 THEN 2 END WHERE id = NEW.id;\n\
                   END;\nCREATE INDEX i ON users (id);";
        let statements = split(sql, Dialect::Sqlite);
        assert_eq!(statements.len(), 2, "{statements:#?}");
        assert!(statements[0].text.ends_with("END"));
        assert!(statements[1].starts_with(&["CREATE", "INDEX"]));
    }

    #[test]
    fn mysql_trigger_with_if_blocks() {
        let sql = "CREATE TRIGGER t BEFORE INSERT ON a FOR EACH ROW BEGIN\n\
                   IF NEW.x IS NULL THEN SET NEW.x = 1; END IF;\nEND;\nSELECT 1;";
        assert_eq!(split(sql, Dialect::MySql).len(), 2);
    }

    #[test]
    fn words_classify_statements() {
        let statements = split(
            "create index concurrently i on t (x); CREATE UNIQUE INDEX CONCURRENTLY j ON t (y)",
            Dialect::Postgres,
        );
        assert!(statements[0].starts_with(&["CREATE", "INDEX", "CONCURRENTLY"]));
        assert!(statements[1].has_word("CONCURRENTLY"));
    }
}
