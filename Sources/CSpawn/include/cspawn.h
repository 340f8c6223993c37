// The few process calls the exec runner needs that Swift cannot reach directly: posix_spawn with its file
// actions and attributes set up in one place, pidfd_open (a raw syscall, variadic in libc) and pipe2.
#ifndef STANZAD_CSPAWN_H
#define STANZAD_CSPAWN_H

#include <sys/types.h>

/// Starts `path` (an absolute or relative path, never searched) in a new session, with exactly `envp`, in
/// `workdir`, with `stdin_fd`/`stdout_fd`/`stderr_fd` as 0/1/2, every other descriptor closed, all signals at their default disposition and none blocked.
/// Returns 0 and sets `*pid`, or an errno value.
int stanzad_spawn(const char *path, char *const argv[], char *const envp[], const char *workdir,
                  int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid);

/// pidfd_open(2): a descriptor that polls readable when `pid` exits; -1 with errno set on failure.
int stanzad_pidfd_open(pid_t pid);

/// pipe2(2) (needs _GNU_SOURCE, which Swift's Glibc module does not define).
int stanzad_pipe(int fds[2], int flags);

/// prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are re-parented to this process instead of init.
/// Not inherited by children (fork clears it), so handlers never adopt anything. 0 or -1 with errno set.
int stanzad_become_subreaper(void);

/// waitid(P_PID, pid, WEXITED | flags) (flags: WNOHANG, WNOWAIT), retried on EINTR. Returns `pid` with
/// `*status` set in wait(2) form (WIFEXITED/WTERMSIG decode it) once it has exited, 0 when WNOHANG and it has
/// not, -1 with errno set (ECHILD: not our child, or already reaped). Only ever this one pid: never P_ALL.
int stanzad_wait(pid_t pid, int flags, int *status);

/// Names the calling thread (prctl PR_SET_NAME; at most 15 bytes are kept), as /proc and ps show it.
void stanzad_name_thread(const char *name);

/// epoll_create1(EPOLL_CLOEXEC) with an eventfd (nonblocking, close-on-exec) registered under token -1, so
/// another thread can wake the waiter. Returns the epoll descriptor and sets `*wake_fd`, or -1 with errno set.
int stanzad_epoll_create(int *wake_fd);

/// Watches `fd` (level-triggered) for `readable` or writable, reported under `token`. 0 or -1 with errno set.
int stanzad_epoll_add(int epoll_fd, int fd, int readable, long long token);

/// Stops watching `fd`. 0 or -1 with errno set.
int stanzad_epoll_remove(int epoll_fd, int fd);

/// epoll_wait: up to `capacity` ready descriptors as their tokens and whether each is readable/hung up
/// (`kinds[i]` bit 0: in, bit 1: out, bit 2: error or hang-up). The count, or -1 with errno set.
int stanzad_epoll_wait(int epoll_fd, long long *tokens, int *kinds, int capacity, int timeout_ms);

/// Wakes a `stanzad_epoll_wait` on the epoll that `wake_fd` belongs to.
void stanzad_wake(int wake_fd);

/// Empties `wake_fd` after a wake-up.
void stanzad_drain_wake(int wake_fd);

#endif
