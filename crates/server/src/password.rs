//! Passwords: argon2id hashes and the account's password policy.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use drawbridge_proto::PasswordPolicy;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// The longest password we hash (argon2 is costly; this bounds the work).
pub const MAX_PASSWORD_LEN: usize = 256;

const COMMON: &str = include_str!("common_passwords.txt");

fn hasher() -> Argon2<'static> {
    // OWASP's argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).expect("static argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with valid parameters cannot fail")
        .to_string()
}

/// Checks a password against a stored argon2 hash (constant-time inside argon2).
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_PASSWORD_LEN {
        return false;
    }
    match PasswordHash::new(stored) {
        Ok(h) => hasher().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// Why an argon2 computation did not run.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Every slot was taken for longer than the wait, or too many were waiting.
    #[error("the server is busy checking passwords; try again in a moment")]
    Busy,
    /// The computation failed (a panic inside argon2) or its thread is gone.
    #[error("password hashing failed")]
    Failed,
}

impl From<HashError> for crate::error::AppError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => {
                metrics::counter!("password_hashing_busy_total").increment(1);
                crate::error::AppError::new(drawbridge_proto::ErrorCode::RateLimited, e.to_string())
            }
            HashError::Failed => crate::error::AppError::internal(anyhow::anyhow!(e)),
        }
    }
}

/// How many nice steps the hashing threads run below the rest of the server
/// (nice 10 when the server runs at 0; see [`hashing_nice`]). Whenever tunnels, channels or the
/// API want the CPU, the scheduler gives it to them first: a nice-10 thread
/// gets about a tenth of a core against one busy nice-0 thread, so a flood of
/// logins takes little from them, while hashing still progresses on a machine
/// that is busy with other work (nice 19, about 1.5 %, made logins wait past
/// their 5 s on a loaded host); on an otherwise idle machine it runs at full
/// speed.
pub const HASHING_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The share of its time a hashing thread may spend hashing when logins keep
/// it busy (see [`Hashing::new`]): after a computation that took `t` the slot
/// rests `t × (1 − share) / share` before it takes the next one. An occasional
/// login is not slowed (the rest comes after its answer); a flood of logins
/// gets at most `share` of a core per slot, so what the rest of the server
/// does (relayed tunnels, edge channels, the API) keeps the remaining CPU —
/// nice alone still let a flood take a fifth of a busy 2-core machine's relay
/// throughput, and a share of 0.5 still about a fifth; 0.25 keeps it within
/// 5 % (docs/loadtest.md, `--dos`).
pub const DEFAULT_HASHING_SHARE: f64 = 0.25;

/// Runs argon2 on threads of its own at a low OS priority ([`HASHING_NICE`]),
/// off the async workers, with at most `limit` computations at once, each slot
/// busy at most `share` of the time, so a burst of logins can neither occupy
/// the async workers nor take the CPU from edge channels, relay traffic or the
/// API. Excess callers wait up to `wait` for a slot; beyond `max_waiting`
/// waiting callers are refused at once.
pub struct Hashing {
    permits: Arc<Semaphore>,
    limit: usize,
    /// Rest after a computation, per unit of its duration: (1 − share) / share.
    rest_per_busy: f64,
    max_waiting: usize,
    wait: Duration,
    waiting: AtomicUsize,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Jobs for the hashing threads (never more than `limit` queued: each
    /// holds a permit). The threads end when this is dropped.
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The nice value for a hashing thread of a process whose threads run at `base`:
/// [`HASHING_NICE`] steps lower than the rest of the process (at most 19), so
/// hashing never runs at a higher priority than the async workers, also when
/// the server itself was started under `nice`.
pub fn hashing_nice(base: i32) -> i32 {
    base.saturating_add(HASHING_NICE).min(19)
}

/// Lowers the calling thread's priority by [`HASHING_NICE`] (Linux: the nice
/// value is per thread; see [`hashing_nice`]). Best effort: where it fails the
/// thread runs as it is.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; getpriority only reads and
        // setpriority changes only the scheduling priority of this thread
        // (errno is cleared first: -1 is a valid nice value).
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            *libc::__errno_location() = 0;
            let base = libc::getpriority(libc::PRIO_PROCESS, tid);
            let base = if base == -1 && *libc::__errno_location() != 0 {
                0
            } else {
                base
            };
            if libc::setpriority(libc::PRIO_PROCESS, tid, hashing_nice(base)) != 0 {
                tracing::warn!(
                    error = %std::io::Error::last_os_error(),
                    "could not lower the password hashing threads' priority"
                );
            }
        }
    }
}

/// What the process-wide pool uses for [`DEFAULT_HASHING_SHARE`]; set once,
/// before the first login, from the server's configuration.
static GLOBAL_SHARE: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Sets the share of the process-wide pool ([`Hashing::global`]); only the
/// first call before the pool's first use counts. Values are clamped to
/// 0.05..=1.
pub fn set_global_share(share: f64) {
    let _ = GLOBAL_SHARE.set(share);
}

impl Hashing {
    /// A pool of `limit` hashing threads, each hashing at most `share`
    /// (0.05..=1; 1 = no rest) of its time under a steady stream of work.
    pub fn new(limit: usize, max_waiting: usize, wait: Duration, share: f64) -> Self {
        let limit = limit.max(1);
        let share = if share.is_finite() {
            share.clamp(0.05, 1.0)
        } else {
            1.0
        };
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..limit {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    lower_own_priority();
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a password hashing thread failed");
            }
        }
        Hashing {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            rest_per_busy: (1.0 - share) / share,
            max_waiting,
            wait,
            waiting: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
            jobs,
        }
    }

    /// The process-wide pool: one slot fewer than the cores (at least one, at
    /// most 8), so one core stays free for everything else; 64 waiters per
    /// slot, each waiting at most 5 s.
    pub fn global() -> &'static Hashing {
        static POOL: LazyLock<Hashing> = LazyLock::new(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let limit = cores.saturating_sub(1).clamp(1, 8);
            let share = GLOBAL_SHARE.get().copied().unwrap_or(DEFAULT_HASHING_SHARE);
            Hashing::new(limit, 64 * limit, Duration::from_secs(5), share)
        });
        &POOL
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The most computations that ever ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Takes a place among the callers of this pool, before any other work of
    /// a request that will hash: when the pool is full (`max_waiting` callers
    /// already waiting) the request is refused here, having read and written
    /// nothing; a login refused as busy costs no database access.
    pub fn place(&self) -> Result<Place<'_>, HashError> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(HashError::Busy);
        }
        Ok(Place { pool: self })
    }

    /// Callers holding a place and waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// Runs `f` on a hashing thread once a slot is free ([`Hashing::place`],
    /// then [`Place::run`]).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        self.place()?.run(f).await
    }
}

/// A caller's place in a [`Hashing`] pool's queue, taken by [`Hashing::place`];
/// given back when it runs or is dropped.
pub struct Place<'a> {
    pool: &'a Hashing,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.pool.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Place<'_> {
    /// Runs `f` on a hashing thread once a slot is free (waiting at most the
    /// pool's wait). The slot is held by the job itself, so a caller that gives
    /// up (a dropped request) does not free it while the computation still runs.
    pub async fn run<T: Send + 'static>(
        self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let pool = self.pool;
        let permit =
            tokio::time::timeout(pool.wait, Arc::clone(&pool.permits).acquire_owned()).await;
        drop(self);
        let Ok(Ok(permit)) = permit else {
            return Err(HashError::Busy);
        };
        let running = Arc::clone(&pool.running);
        let peak = Arc::clone(&pool.peak);
        let rest_per_busy = pool.rest_per_busy;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _permit = permit;
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let started = std::time::Instant::now();
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let busy = started.elapsed();
            running.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(out);
            // The caller has its answer; the slot (still held) rests so that
            // a stream of computations gets at most its share of a core.
            if rest_per_busy > 0.0 {
                std::thread::sleep(busy.mul_f64(rest_per_busy).min(Duration::from_secs(2)));
            }
        });
        pool.jobs.send(job).map_err(|_| HashError::Failed)?;
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            _ => Err(HashError::Failed),
        }
    }

    /// [`verify`] in this place.
    pub async fn verify(self, password: &str, stored: &str) -> Result<bool, HashError> {
        if password.len() > MAX_PASSWORD_LEN {
            return Ok(false);
        }
        let (password, stored) = (password.to_string(), stored.to_string());
        self.run(move || verify(&password, &stored)).await
    }
}

/// [`verify`] on the global [`Hashing`] pool.
pub async fn verify_async(password: &str, stored: &str) -> Result<bool, HashError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Ok(false);
    }
    Hashing::global().place()?.verify(password, stored).await
}

/// [`verify`] of one password against several hashes (the history) in one slot.
pub async fn verify_any_async(password: &str, stored: Vec<String>) -> Result<bool, HashError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Ok(false);
    }
    let password = password.to_string();
    Hashing::global()
        .run(move || {
            // Check all of them: the time does not tell which one matched.
            stored
                .iter()
                .fold(false, |any, h| verify(&password, h) | any)
        })
        .await
}

/// [`hash`] on the global [`Hashing`] pool.
pub async fn hash_async(password: &str) -> Result<String, HashError> {
    let password = password.to_string();
    Hashing::global().run(move || hash(&password)).await
}

/// Why a password was refused; the message is shown to the user.
pub fn check_policy(policy: &PasswordPolicy, username: &str, password: &str) -> Result<(), String> {
    let len = password.chars().count();
    if len < policy.min_length as usize {
        return Err(format!(
            "the password must have at least {} characters",
            policy.min_length
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "the password must have at most {MAX_PASSWORD_LEN} bytes"
        ));
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if classes < policy.min_classes as usize {
        return Err(format!(
            "the password must mix at least {} of: lower case, upper case, digits, other characters",
            policy.min_classes
        ));
    }
    if policy.deny_common {
        let lower = password.to_lowercase();
        // "Password123!" is "password" with a suffix: check the stem too.
        let stem = lower.trim_end_matches(|c: char| !c.is_alphabetic());
        if COMMON
            .lines()
            .any(|c| c == lower || (!stem.is_empty() && c == stem))
        {
            return Err("this password is on the list of commonly used passwords".into());
        }
        if !username.is_empty() && lower.contains(&username.to_lowercase()) {
            return Err("the password must not contain the user name".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_hashing_completes_with_at_most_limit_at_once() {
        let pool = Arc::new(Hashing::new(2, 100, Duration::from_secs(30), 1.0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let pool = Arc::clone(&pool);
            tasks.push(tokio::spawn(async move {
                pool.run(|| std::thread::sleep(Duration::from_millis(10)))
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().expect("every call completes");
        }
        assert_eq!(pool.peak(), 2, "never more than the limit at once");
        // The real thing through the global pool: a burst of verifications.
        let stored = hash("Correct-Horse-9");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let stored = stored.clone();
            tasks.push(tokio::spawn(async move {
                let pw = if i % 2 == 0 {
                    "Correct-Horse-9"
                } else {
                    "wrong"
                };
                (i, verify_async(pw, &stored).await.unwrap())
            }));
        }
        for t in tasks {
            let (i, ok) = t.await.unwrap();
            assert_eq!(ok, i % 2 == 0);
        }
        assert!(Hashing::global().peak() <= Hashing::global().limit());
    }

    /// Occupies `pool`'s only slot until the returned sender is used (or
    /// dropped), then puts one more caller in its queue.
    async fn hold_the_slot_and_queue_one(
        pool: &Arc<Hashing>,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<(), HashError>>,
        tokio::task::JoinHandle<Result<(), HashError>>,
    ) {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let holder = {
            let pool = Arc::clone(pool);
            tokio::spawn(async move {
                pool.run(move || {
                    let _ = hold.recv();
                })
                .await
            })
        };
        while pool.peak() == 0 {
            tokio::task::yield_now().await;
        }
        let waiter = {
            let pool = Arc::clone(pool);
            tokio::spawn(async move { pool.run(|| ()).await })
        };
        while pool.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        (release, holder, waiter)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_of_hashing_gets_only_its_share_of_the_slot_and_answers_come_first() {
        // A quarter share: after 60 ms of work the slot rests 180 ms.
        let pool = Arc::new(Hashing::new(1, 8, Duration::from_secs(30), 0.25));
        let work = || {
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_millis(60) {
                std::hint::spin_loop();
            }
            (start, std::time::Instant::now())
        };
        let first = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move {
                let r = pool.run(work).await;
                (r, std::time::Instant::now())
            }
        });
        // The second is queued while the first runs.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let second = pool.run(work).await.expect("runs after the rest");
        let (first, answered) = first.await.unwrap();
        let (_, first_end) = first.expect("runs");
        let (second_start, _) = second;
        let rest = second_start.duration_since(first_end);
        assert!(
            rest >= Duration::from_millis(170),
            "the slot rested only {rest:?} after 60 ms of work at a quarter share"
        );
        assert!(
            answered < second_start,
            "the first caller had its answer before the rest, not after it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn excess_callers_are_refused_as_busy_instead_of_queueing_without_bound() {
        let pool = Arc::new(Hashing::new(1, 1, Duration::from_secs(2), 1.0));
        // One may wait (and gives up after the wait); a second waiter is refused at once.
        let (release, holder, waiter) = hold_the_slot_and_queue_one(&pool).await;
        assert!(matches!(pool.run(|| ()).await, Err(HashError::Busy)));
        assert!(matches!(waiter.await.unwrap(), Err(HashError::Busy)));
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        pool.run(|| ()).await.expect("free again");
        assert_eq!(pool.peak(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_dropped_while_waiting_gives_its_place_back() {
        // A request dropped while it waits for a slot (its client went away,
        // as a flood's do) must not keep its place: otherwise the queue stays
        // full for good and every later login is refused as busy.
        let pool = Arc::new(Hashing::new(1, 1, Duration::from_secs(30), 1.0));
        let (release, holder, waiter) = hold_the_slot_and_queue_one(&pool).await;
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(pool.waiting(), 0, "the dropped caller's place is free");
        release.send(()).unwrap();
        holder.await.unwrap().unwrap();
        pool.run(|| ()).await.expect("not refused as busy");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashing_runs_at_a_low_os_priority_off_the_async_workers() {
        let nice_here = || {
            // SAFETY: getpriority only reads this thread's nice value (errno is
            // cleared first: -1 is a valid value).
            unsafe {
                *libc::__errno_location() = 0;
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
            }
        };
        let worker = nice_here();
        let (nice, name) = Hashing::global()
            .run(move || {
                (
                    nice_here(),
                    std::thread::current().name().map(str::to_string),
                )
            })
            .await
            .expect("runs");
        // Also when the test itself runs under `nice`: HASHING_NICE steps below
        // the workers, never above them.
        assert_eq!(
            nice,
            hashing_nice(worker),
            "the hashing thread runs HASHING_NICE below the workers"
        );
        if worker < 19 {
            assert!(nice > worker, "hashing yields to the async workers");
        }
        assert!(
            name.is_some_and(|n| n.starts_with("argon2-")),
            "a thread of its own"
        );
        // The async worker's priority is untouched after hashing too.
        assert_eq!(nice_here(), worker);
    }

    #[test]
    fn hashing_is_never_given_a_higher_priority_than_the_process() {
        assert_eq!(hashing_nice(0), HASHING_NICE);
        assert_eq!(hashing_nice(5), 5 + HASHING_NICE);
        assert_eq!(hashing_nice(15), 19);
        assert_eq!(hashing_nice(19), 19);
        assert_eq!(hashing_nice(-5), -5 + HASHING_NICE);
        for base in -20..=19 {
            assert!(hashing_nice(base) >= base);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_hashing_is_an_error_and_the_slot_is_free_again() {
        let pool = Hashing::new(1, 4, Duration::from_secs(2), 1.0);
        let r = pool.run(|| -> u8 { panic!("inside argon2") }).await;
        assert!(matches!(r, Err(HashError::Failed)));
        assert_eq!(pool.run(|| 7).await.expect("the thread lives on"), 7);
    }

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("Correct-Horse-9");
        let b = hash("Correct-Horse-9");
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salted");
        assert!(verify("Correct-Horse-9", &a));
        assert!(!verify("correct-horse-9", &a));
        assert!(!verify("x", "not a hash"));
    }

    #[test]
    fn policy_enforces_length_classes_common_and_username() {
        let p = PasswordPolicy::default();
        assert!(
            check_policy(&p, "anna", "Sh0rt!")
                .unwrap_err()
                .contains("at least 10")
        );
        assert!(
            check_policy(&p, "anna", "alllowercaseletters")
                .unwrap_err()
                .contains("mix")
        );
        let mut common = p.clone();
        common.min_classes = 0;
        assert!(
            check_policy(&common, "anna", "Password123")
                .unwrap_err()
                .contains("commonly")
        );
        assert!(
            check_policy(&p, "anna", "Password123!")
                .unwrap_err()
                .contains("commonly")
        );
        assert!(
            check_policy(&p, "anna", "Anna-Secure-77")
                .unwrap_err()
                .contains("user name")
        );
        assert!(check_policy(&p, "anna", "Blue-Tractor-42").is_ok());
    }
}
