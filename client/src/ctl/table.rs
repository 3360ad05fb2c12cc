//! etcdctl's `-w table` layout: a boxed grid, headers centred, cells right-aligned.

/// Renders `rows` under `headers`.
pub(super) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for c in cells {
            s.push(' ');
            s.push_str(&c);
            s.push_str(" |");
        }
        s
    };
    let header = line(
        headers
            .iter()
            .zip(&widths)
            .map(|(h, w)| {
                let pad = w - h.chars().count();
                format!("{}{h}{}", " ".repeat(pad / 2), " ".repeat(pad - pad / 2))
            })
            .collect(),
    );
    let mut out = vec![rule.clone(), header, rule.clone()];
    for r in rows {
        out.push(line(
            widths
                .iter()
                .enumerate()
                .map(|(i, w)| format!("{:>w$}", r.get(i).map_or("", String::as_str)))
                .collect(),
        ));
    }
    out.push(rule);
    out.join("\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn lays_out_like_etcdctl() {
        let t = super::render(
            &["ID", "STATUS", "IS LEARNER"],
            &[vec![
                "2943212f5e2cf73".into(),
                "started".into(),
                "false".into(),
            ]],
        );
        assert_eq!(
            t,
            "+-----------------+---------+------------+\n\
             |       ID        | STATUS  | IS LEARNER |\n\
             +-----------------+---------+------------+\n\
             | 2943212f5e2cf73 | started |      false |\n\
             +-----------------+---------+------------+"
        );
    }
}
