package audit

import "strings"

// standalone reports whether records of type typ are events of their own
// that are never followed by an EOE: the messages user space sends to the
// kernel (types 1005 and 1100-1299: USER_*, CRED_*, SERVICE_*, DAEMON_*,
// ...; and 2100-2999: ANOM_LOGIN_*, RESP_*, USER_ROLE_CHANGE, CRYPTO_*,
// VIRT_*, ...). The kernel stamps each of them with a serial of its own (it
// logs them without the sender's syscall context), and auditd writes its
// DAEMON_* records itself.
//
// Kernel records (LOGIN, AVC, CONFIG_CHANGE, ANOM_ABEND, ...) are not
// standalone even though they may appear alone: emitted during a syscall
// while audit rules are loaded, they are followed by that syscall's SYSCALL,
// PROCTITLE and EOE records with the same serial.
func standalone(typ string) bool {
	if strings.HasPrefix(typ, "UNKNOWN[") {
		n, ok := typeNumber(typ)
		return ok && (n == 1005 || 1100 <= n && n <= 1299 || 2100 <= n && n <= 2999)
	}
	switch typ {
	case "USER", "USYS_CONFIG", "ADD_USER", "DEL_USER", "ADD_GROUP",
		"DEL_GROUP", "DAC_CHECK", "CHGRP_ID", "TEST", "TRUSTED_APP",
		"CHUSER_ID", "MAC_CHECK", "SOFTWARE_UPDATE", "DEV_ALLOC",
		"DEV_DEALLOC", "FS_RELABEL":
		return true
	case "ANOM_PROMISCUOUS", "ANOM_ABEND", "ANOM_LINK", "ANOM_CREAT":
		return false // kernel anomalies (1700-1799)
	}
	for _, p := range standalonePrefixes {
		if strings.HasPrefix(typ, p) {
			return true
		}
	}
	return false
}

var standalonePrefixes = [...]string{
	"USER_", "CRED_", "ACCT_", "GRP_", "SYSTEM_", "SERVICE_", "DAEMON_",
	"ANOM_", "RESP_", "ROLE_", "LABEL_", "CRYPTO_", "VIRT_",
}

// typeNumber parses the number in "UNKNOWN[1334]".
func typeNumber(typ string) (int, bool) {
	s := strings.TrimPrefix(typ, "UNKNOWN[")
	if len(s) < 2 || len(s) > 6 || s[len(s)-1] != ']' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s)-1; i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}
