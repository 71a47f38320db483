//! Which part of a manifest a process runs: `--shard K/N`, or the array index a cluster engine
//! gives its tasks (a Slurm job array, a Kubernetes Indexed Job).

use crate::error::{Error, Result};

/// Part `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole manifest.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// Parses `K/N` with 1 <= K <= N.
    pub fn parse(s: &str) -> Result<Self> {
        let err = || Error::invalid(format!("--shard must look like K/N with 1 <= K <= N (e.g. 2/8), got `{s}`"));
        let (k, n) = s.split_once('/').ok_or_else(err)?;
        let index: usize = k.trim().parse().map_err(|_| err())?;
        let count: usize = n.trim().parse().map_err(|_| err())?;
        if count == 0 || index == 0 || index > count {
            return Err(err());
        }
        Ok(Self { index, count })
    }

    /// The shard this process runs: `--shard K/N` when given; else a Slurm job array's task
    /// (`SLURM_ARRAY_TASK_ID` - `SLURM_ARRAY_TASK_MIN` + 1 of `SLURM_ARRAY_TASK_COUNT`); else a
    /// Kubernetes Indexed Job's (`JOB_COMPLETION_INDEX` + 1 of `--shards N`); else the whole.
    pub fn resolve(flag: Option<&str>, shards: Option<usize>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        if let Some(s) = flag {
            if shards.is_some() {
                return Err(Error::invalid("--shard K/N and --shards N cannot be used together"));
            }
            return Self::parse(s);
        }
        let number = |name: &str| -> Result<Option<usize>> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| Error::invalid(format!("{name} must be a whole number, got `{v}`"))),
            }
        };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let count = number("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::invalid(
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not (submit with sbatch --array)",
                )
            })?;
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            if id < min || id - min >= count {
                return Err(Error::invalid(format!(
                    "the Slurm array task {id} is outside {min}..{} (SLURM_ARRAY_TASK_MIN, _COUNT); \
                     use a contiguous array such as --array=0-{}",
                    min + count - 1,
                    count - 1
                )));
            }
            return Ok(Self { index: id - min + 1, count });
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = shards.ok_or_else(|| {
                Error::invalid(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give the job's completions as --shards N",
                )
            })?;
            if count == 0 || index >= count {
                return Err(Error::invalid(format!(
                    "JOB_COMPLETION_INDEX {index} is outside 0..{count} (--shards {count})"
                )));
            }
            return Ok(Self { index: index + 1, count });
        }
        if let Some(n) = shards {
            return Err(Error::invalid(format!(
                "--shards {n} needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job); elsewhere use --shard K/{n}"
            )));
        }
        Ok(Self::WHOLE)
    }

    /// `K/N`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }

    /// The results file of this shard: `results.jsonl` for the whole manifest, else
    /// `results-K-of-N.jsonl`, so shards on a shared volume never write the same file.
    pub fn results_name(&self) -> String {
        if self.count == 1 {
            "results.jsonl".into()
        } else {
            format!("results-{}-of-{}.jsonl", self.index, self.count)
        }
    }

    /// Whether group number `g` (0-based, in order of first appearance) is this shard's:
    /// groups are dealt round-robin.
    pub fn owns_group(&self, g: usize) -> bool {
        g % self.count == self.index - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn flags_slurm_and_kubernetes() {
        let none = env(&[]);
        assert_eq!(Shard::resolve(Some("2/3"), None, &none).unwrap(), Shard { index: 2, count: 3 });
        assert_eq!(Shard::resolve(None, None, &none).unwrap(), Shard::WHOLE);
        for bad in ["0/3", "4/3", "2", "a/b", "1/0"] {
            let e = Shard::resolve(Some(bad), None, &none).unwrap_err().to_string();
            assert_eq!(e, format!("--shard must look like K/N with 1 <= K <= N (e.g. 2/8), got `{bad}`"));
        }
        let slurm =
            env(&[("SLURM_ARRAY_TASK_ID", "12"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "10")]);
        assert_eq!(Shard::resolve(None, None, &slurm).unwrap(), Shard { index: 3, count: 3 });
        let k8s = env(&[("JOB_COMPLETION_INDEX", "0")]);
        assert_eq!(Shard::resolve(None, Some(4), &k8s).unwrap(), Shard { index: 1, count: 4 });
        assert!(Shard::resolve(None, None, &k8s).unwrap_err().to_string().contains("--shards N"));
        assert!(Shard::resolve(None, Some(4), &none).unwrap_err().to_string().contains("JOB_COMPLETION_INDEX"));
        // The flag wins over the environment.
        assert_eq!(Shard::resolve(Some("1/2"), None, &slurm).unwrap(), Shard { index: 1, count: 2 });
        assert_eq!(Shard { index: 2, count: 3 }.results_name(), "results-2-of-3.jsonl");
        assert_eq!(Shard::WHOLE.results_name(), "results.jsonl");
        let s = Shard { index: 2, count: 3 };
        assert_eq!((0..7).filter(|&g| s.owns_group(g)).collect::<Vec<_>>(), [1, 4]);
    }
}
