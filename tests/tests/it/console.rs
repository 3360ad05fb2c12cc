//! Console blocks of the docs, as the suite runs them: each ```console block is a list of
//! `$ command` lines, each followed by what it prints (`…` stands for what differs between
//! runs).

/// The bodies of a document's code blocks opened with `fence` (e.g. "```console").
pub(crate) fn blocks(readme: &str, fence: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = readme;
    while let Some(start) = rest.find(&format!("{fence}\n")) {
        let body = &rest[start + fence.len() + 1..];
        let end = body.find("```\n").expect("a closed block");
        out.push(body[..end].to_string());
        rest = &body[end..];
    }
    out
}

/// One command of a console block and the lines it should print.
pub(crate) struct Step {
    pub(crate) command: String,
    pub(crate) expected: Vec<String>,
}

pub(crate) fn steps(block: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        if let Some(command) = line.strip_prefix("$ ") {
            let mut command = command.to_string();
            // A here-document runs to its terminator.
            if let Some(tag) = command
                .split("<<'")
                .nth(1)
                .and_then(|t| t.split('\'').next())
                .map(str::to_string)
            {
                for l in lines.by_ref() {
                    command.push('\n');
                    command.push_str(l);
                    if l == tag {
                        break;
                    }
                }
            }
            steps.push(Step {
                command,
                expected: Vec::new(),
            });
        } else if let Some(step) = steps.last_mut() {
            step.expected.push(line.to_string());
        }
    }
    steps
}

/// Whether `line` fits `pattern`, where `…` matches any text. A table row or border fits
/// whatever the columns' widths: they follow the widest cell, which differs between runs.
pub(crate) fn fits(pattern: &str, line: &str) -> bool {
    if [pattern, line]
        .iter()
        .all(|l| l.starts_with('|') || l.starts_with('+'))
    {
        return fits_text(&squeeze(pattern), &squeeze(line));
    }
    fits_text(pattern, line)
}

/// A table line with each run of spaces or dashes cut to one.
fn squeeze(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if (c == ' ' || c == '-') && out.ends_with(c) {
            continue;
        }
        out.push(c);
    }
    out
}

fn fits_text(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || !line.ends_with(last) || line.len() < first.len() + last.len() {
        return false;
    }
    let mut at = first.len();
    let end = line.len() - last.len();
    for part in &parts[1..parts.len() - 1] {
        match line[at..end].find(part) {
            Some(i) => at += i + part.len(),
            None => return false,
        }
    }
    true
}

/// A lease a document names gets the id this run printed in its place (`lease X granted …`),
/// from then on: adds the pair to `names` (document → run).
pub(crate) fn learn_lease_ids(
    expected: &[String],
    printed: &[String],
    names: &mut Vec<(String, String)>,
) {
    let id = |l: &str| {
        l.strip_prefix("lease ")
            .and_then(|r| r.split_once(" granted"))
            .map(|(id, _)| id.to_string())
    };
    for (want, got) in expected.iter().zip(printed) {
        if let (Some(a), Some(b)) = (id(want), id(got)) {
            if a != b && !names.iter().any(|(from, _)| *from == a) {
                names.push((a, b));
            }
        }
    }
}
