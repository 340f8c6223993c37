#define _GNU_SOURCE
#include "cspawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

int stanzad_spawn(const char *path, char *const argv[], char *const envp[], const char *workdir,
                  int stdin_fd, int stdout_fd, int stderr_fd, pid_t *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    int rc = posix_spawn_file_actions_init(&actions);
    if (rc != 0) return rc;
    rc = posix_spawnattr_init(&attributes);
    if (rc != 0) {
        posix_spawn_file_actions_destroy(&actions);
        return rc;
    }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, stdin_fd, 0);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions, stderr_fd, 2);
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    if (rc == 0 && workdir != NULL) rc = posix_spawn_file_actions_addchdir_np(&actions, workdir);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attributes, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attributes, &all);
    if (rc == 0) rc = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (rc == 0) rc = posix_spawn(pid, path, &actions, &attributes, argv, envp);
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    return rc;
}

int stanzad_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int stanzad_pipe(int fds[2], int flags) {
    return pipe2(fds, flags);
}

int stanzad_become_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

int stanzad_wait(pid_t pid, int flags, int *status) {
    siginfo_t info;
    info.si_pid = 0;
    int rc;
    do { rc = waitid(P_PID, (id_t)pid, &info, WEXITED | flags); } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -1;
    if (info.si_pid == 0) return 0;  // WNOHANG and still running
    switch (info.si_code) {
    case CLD_EXITED: *status = (info.si_status & 0xff) << 8; break;
    case CLD_KILLED: *status = info.si_status & 0x7f; break;
    case CLD_DUMPED: *status = (info.si_status & 0x7f) | 0x80; break;
    default: *status = 0x7f; break;  // not an exit (waitid with WEXITED only reports exits)
    }
    return info.si_pid;
}

void stanzad_name_thread(const char *name) {
    prctl(PR_SET_NAME, name, 0, 0, 0);
}

int stanzad_epoll_create(int *wake_fd) {
    int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) return -1;
    int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0 || stanzad_epoll_add(epoll_fd, wake, 1, -1) < 0) {
        int saved = errno;
        if (wake >= 0) close(wake);
        close(epoll_fd);
        errno = saved;
        return -1;
    }
    *wake_fd = wake;
    return epoll_fd;
}

int stanzad_epoll_add(int epoll_fd, int fd, int readable, long long token) {
    struct epoll_event event;
    event.events = readable ? EPOLLIN : EPOLLOUT;
    event.data.u64 = (uint64_t)token;
    return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

int stanzad_epoll_remove(int epoll_fd, int fd) {
    struct epoll_event event = {0};
    return epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, &event);
}

int stanzad_epoll_wait(int epoll_fd, long long *tokens, int *kinds, int capacity, int timeout_ms) {
    struct epoll_event events[64];
    if (capacity > 64) capacity = 64;
    int count = epoll_wait(epoll_fd, events, capacity, timeout_ms);
    for (int i = 0; i < count; i++) {
        tokens[i] = (long long)events[i].data.u64;
        kinds[i] = ((events[i].events & EPOLLIN) ? 1 : 0) | ((events[i].events & EPOLLOUT) ? 2 : 0)
                 | ((events[i].events & (EPOLLERR | EPOLLHUP)) ? 4 : 0);
    }
    return count;
}

void stanzad_wake(int wake_fd) {
    uint64_t one = 1;
    ssize_t rc;
    do { rc = write(wake_fd, &one, sizeof one); } while (rc < 0 && errno == EINTR);
}

void stanzad_drain_wake(int wake_fd) {
    uint64_t value;
    ssize_t rc;
    do { rc = read(wake_fd, &value, sizeof value); } while (rc < 0 && errno == EINTR);
}
