//! A bank on STM: ten accounts, eight tellers moving money between random pairs at once,
//! each transfer one serializable transaction; at the end the total is what it was.
//!
//! `cargo run --release -p cairn-examples --bin stm -- 200`   (transfers per teller)

use cairn_recipes::{Isolation, Stm};

const ACCOUNTS: usize = 10;
const TELLERS: u64 = 8;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    cairn_examples::finish(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let transfers: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 50,
    };
    let client = cairn_examples::connect().await?;
    let account = |i: usize| format!("bank/accounts/{i:02}");
    for i in 0..ACCOUNTS {
        client.put(account(i), "100", None).await?;
    }
    let mut tellers = Vec::new();
    for t in 0..TELLERS {
        let stm = Stm::new(&client, Isolation::SerializableSnapshot);
        tellers.push(tokio::spawn(async move {
            // A small deterministic generator keeps the example free of extra crates.
            let mut seed = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = move |n: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % n
            };
            for _ in 0..transfers {
                let (from, to) = (account(next(10) as usize), account(next(10) as usize));
                let amount = next(30) as i64 + 1;
                let (from, to) = (&from, &to);
                stm.run(|tx| async move {
                    let balance: i64 = tx.get_string(from.as_str()).await?.parse().unwrap_or(0);
                    if from == to || balance < amount {
                        return Ok(());
                    }
                    let other: i64 = tx.get_string(to.as_str()).await?.parse().unwrap_or(0);
                    tx.put(from.as_str(), (balance - amount).to_string());
                    tx.put(to.as_str(), (other + amount).to_string());
                    Ok(())
                })
                .await?;
            }
            Ok::<_, cairn_recipes::Error>(())
        }));
    }
    for t in tellers {
        t.await??;
    }
    let mut total = 0;
    for i in 0..ACCOUNTS {
        let r = client.get(account(i), None).await?;
        let balance: i64 = String::from_utf8_lossy(&r.kvs[0].value).parse()?;
        println!("{} {balance}", account(i));
        total += balance;
    }
    println!("total {total} (was {})", 100 * ACCOUNTS);
    Ok(())
}
