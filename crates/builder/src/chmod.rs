//! `COPY/ADD --chmod`: octal (`0755`, applied as is), or symbolic as
//! chmod(1) reads it (`u+x`, `go-w`, `a=rX,u+s`), applied to each copied
//! file's own mode, as BuildKit does through `dchapes-mode` (no who means
//! `a`, no umask).

use crate::fault::StepError;

/// A parsed `--chmod`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chmod {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clause {
    /// Classes touched: a mask of `u` (0o700), `g` (0o070), `o` (0o007).
    who: u32,
    actions: Vec<(char, Perm)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perm {
    /// `rwxXst` letters.
    Bits(String),
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(char),
}

impl Chmod {
    /// A `--chmod` that is neither form is the user's to fix.
    pub fn parse(s: &str) -> Result<Chmod, StepError> {
        let bad = || {
            StepError::user(format!(
                "--chmod={s}: not an octal mode or a chmod(1) symbolic mode"
            ))
        };
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return u32::from_str_radix(s, 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .map(Chmod::Octal)
                .ok_or_else(bad);
        }
        let mut clauses = Vec::new();
        for clause in s.split(',') {
            let mut chars = clause.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => 0o700,
                    'g' => 0o070,
                    'o' => 0o007,
                    'a' => 0o777,
                    _ => break,
                };
                chars.next();
            }
            if who == 0 {
                who = 0o777;
            }
            let mut actions = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let mut bits = String::new();
                let mut copy = None;
                while let Some(&c) = chars.peek() {
                    match c {
                        'r' | 'w' | 'x' | 'X' | 's' | 't' if copy.is_none() => bits.push(c),
                        'u' | 'g' | 'o' if bits.is_empty() && copy.is_none() => copy = Some(c),
                        _ => break,
                    }
                    chars.next();
                }
                actions.push((op, copy.map_or(Perm::Bits(bits), Perm::Copy)));
            }
            if actions.is_empty() {
                return Err(bad());
            }
            clauses.push(Clause { who, actions });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode a file of mode `mode` (permission bits) gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for c in clauses {
            for (op, perm) in &c.actions {
                let mut set = match perm {
                    Perm::Copy(class) => {
                        // The source class's rwx, spread to every class.
                        let shift = match class {
                            'u' => 6,
                            'g' => 3,
                            _ => 0,
                        };
                        ((mode >> shift) & 0o7) * 0o111
                    }
                    Perm::Bits(bits) => {
                        let mut v = 0;
                        for b in bits.chars() {
                            v |= match b {
                                'r' => 0o444,
                                'w' => 0o222,
                                'x' => 0o111,
                                'X' if is_dir || mode & 0o111 != 0 => 0o111,
                                's' => 0o6000,
                                't' => 0o1000,
                                _ => 0,
                            };
                        }
                        v
                    }
                };
                // Special bits go with their class: setuid with u, setgid
                // with g, sticky with o.
                let mut specials = 0;
                if c.who & 0o700 != 0 {
                    specials |= 0o4000;
                }
                if c.who & 0o070 != 0 {
                    specials |= 0o2000;
                }
                if c.who & 0o007 != 0 {
                    specials |= 0o1000;
                }
                set &= c.who | specials;
                mode = match op {
                    '+' => mode | set,
                    '-' => mode & !set,
                    // `=`: the classes' rwx and set-id bits are replaced.
                    _ => (mode & !(c.who | (specials & 0o6000))) | set,
                };
            }
        }
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ap(s: &str, mode: u32, dir: bool) -> u32 {
        Chmod::parse(s).unwrap().apply(mode, dir)
    }

    #[test]
    fn octal_and_symbolic() {
        assert_eq!(ap("0640", 0o777, false), 0o640);
        assert_eq!(ap("755", 0o600, true), 0o755);
        assert_eq!(ap("u+x", 0o644, false), 0o744);
        assert_eq!(ap("+x", 0o644, false), 0o755);
        assert_eq!(ap("go-w", 0o666, false), 0o644);
        assert_eq!(ap("a=rX", 0o640, false), 0o444);
        assert_eq!(ap("a=rX", 0o750, false), 0o555);
        assert_eq!(ap("a=rX", 0o700, true), 0o555);
        assert_eq!(ap("u=rwx,g=rx,o=", 0o777, false), 0o750);
        assert_eq!(ap("u+s", 0o755, false), 0o4755);
        assert_eq!(ap("g=u", 0o640, false), 0o660);
        assert!(Chmod::parse("lots").is_err());
        assert!(Chmod::parse("u").is_err());
        assert!(Chmod::parse("99999").is_err());
    }
}
