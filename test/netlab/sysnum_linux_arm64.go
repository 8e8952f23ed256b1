package netlab

// The syscall package does not define SYS_SETNS.
const sysSetns = 268
