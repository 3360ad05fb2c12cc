//! etcdctl's transaction text: compares, an empty line, success operations, an empty line,
//! failure operations, an empty line.
//!
//! ```text
//! mod("key1") > "0"
//! value("key2") = "x"
//!
//! put key1 "new value"
//! get key2 --prefix
//!
//! del key1
//! ```

use crate::{Compare, DeleteOptions, GetOptions, Op, PutOptions, Txn};

/// Splits a line into words; double quotes group words and are removed.
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn compare(line: &str) -> Result<Compare, String> {
    let bad = || format!("malformed comparison: {line}");
    let open = line.find('(').ok_or_else(bad)?;
    let close = line.rfind(')').ok_or_else(bad)?;
    let target = line[..open].trim();
    let key = words(&line[open + 1..close]).pop().ok_or_else(bad)?;
    let rest = line[close + 1..].trim();
    let (op, value) = ["!=", "=", ">", "<"]
        .iter()
        .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v)))
        .ok_or_else(bad)?;
    let value = words(value).pop().unwrap_or_default();
    let number = || value.parse::<i64>().map_err(|_| bad());
    macro_rules! apply {
        ($c:expr, $v:expr) => {
            match op {
                "=" => $c.eq($v),
                "!=" => $c.ne($v),
                ">" => $c.gt($v),
                _ => $c.lt($v),
            }
        };
    }
    Ok(match target {
        "ver" | "version" => apply!(Compare::version(key), number()?),
        "c" | "create" => apply!(Compare::create_revision(key), number()?),
        "m" | "mod" => apply!(Compare::mod_revision(key), number()?),
        "val" | "value" => apply!(Compare::value(key), value.clone()),
        "lease" => {
            let id = i64::from_str_radix(&value, 16).map_err(|_| bad())?;
            apply!(Compare::lease(key), id)
        }
        _ => {
            return Err(format!(
                "malformed comparison: {line}; got unknown target {target:?}"
            ))
        }
    })
}

fn op(line: &str) -> Result<Op, String> {
    let w = words(line);
    let bad = || format!("invalid txn request: {line}");
    let (cmd, args) = w.split_first().ok_or_else(bad)?;
    let flags: Vec<&str> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|s| s.as_str())
        .collect();
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let flag = |f: &str| flags.contains(&f);
    match cmd.as_str() {
        "put" => {
            let key = pos.first().ok_or_else(bad)?;
            let value = pos.get(1).map(|s| s.to_string()).unwrap_or_default();
            let mut o = PutOptions::new();
            if flag("--prev-kv") {
                o = o.with_prev_kv();
            }
            if flag("--ignore-value") {
                o = o.with_ignore_value();
            }
            if flag("--ignore-lease") {
                o = o.with_ignore_lease();
            }
            for f in &flags {
                if let Some(l) = f.strip_prefix("--lease=") {
                    o = o.with_lease(i64::from_str_radix(l, 16).map_err(|_| bad())?);
                }
            }
            Ok(Op::put(key.as_str(), value, Some(o)))
        }
        "get" => {
            let key = pos.first().ok_or_else(bad)?;
            let mut o = GetOptions::new().with_range_flags(
                pos.get(1).map(|e| e.as_str()),
                flag("--prefix"),
                flag("--from-key"),
            );
            if flag("--keys-only") {
                o = o.with_keys_only();
            }
            Ok(Op::get(key.as_str(), Some(o)))
        }
        "del" | "delete" => {
            let key = pos.first().ok_or_else(bad)?;
            let mut o = DeleteOptions::new().with_range_flags(
                pos.get(1).map(|e| e.as_str()),
                flag("--prefix"),
                flag("--from-key"),
            );
            if flag("--prev-kv") {
                o = o.with_prev_kv();
            }
            Ok(Op::delete(key.as_str(), Some(o)))
        }
        _ => Err(bad()),
    }
}

/// Parses the whole transaction text.
pub fn parse(text: &str) -> Result<Txn, String> {
    let mut sections: Vec<Vec<&str>> = vec![vec![]];
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if sections.len() == 3 {
                break;
            }
            sections.push(vec![]);
        } else if let Some(s) = sections.last_mut() {
            s.push(line);
        }
    }
    sections.resize(3, vec![]);
    let compares = sections[0]
        .iter()
        .map(|l| compare(l))
        .collect::<Result<Vec<_>, _>>()?;
    let success = sections[1]
        .iter()
        .map(|l| op(l))
        .collect::<Result<Vec<_>, _>>()?;
    let failure = sections[2]
        .iter()
        .map(|l| op(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Txn::new().when(compares).and_then(success).or_else(failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_quoted_spaces() {
        assert_eq!(words(r#"put k "a b""#), vec!["put", "k", "a b"]);
        assert_eq!(words(r#"put k """#), vec!["put", "k", ""]);
    }

    #[test]
    fn a_whole_transaction_parses() {
        let t = parse(
            "mod(\"k\") > \"0\"\nvalue(\"x\") = \"y z\"\n\nput k v\nget k --prefix\n\ndel k\n\n",
        )
        .unwrap()
        .into_request();
        assert_eq!(
            (t.compare.len(), t.success.len(), t.failure.len()),
            (2, 2, 1)
        );
        assert!(parse("bogus(\"k\") = \"1\"\n\n\n").is_err());
    }
}
