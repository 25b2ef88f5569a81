// Package configstore holds a levee cluster's state in etcd: it defines the
// whole key layout, and it keeps the runtime configuration there (the rule
// files and the shedding policy as one versioned Bundle, its history, and
// operator overrides of shedding thresholds).
//
// # Layout
//
// Every key of a cluster lies under its prefix ("/levee/" by default, the
// --etcd-prefix flag); Layout names them, and NewLayout is the only place a
// prefix is normalised:
//
//	members/<id>                {"id":…,"addr":…} under the node's lease
//	status/<id>                 the node's figures for `levee ctl status`, under a lease
//	config/current              {"version":7,"author":…,"reason":…,"time":…}
//	config/history/<version>    the version's metadata and its whole bundle
//	config/overrides/<resource> an Override, under a lease of its duration
//
// members/ is written and watched by each node's cluster.Membership, which
// is given Layout.Members as its key prefix and knows nothing else of the
// layout; a node's key disappears when it leaves or its lease expires.
// status/ holds each node's admin.MemberStatus as JSON, rewritten every few
// seconds under a short lease so that a dead node's figures disappear. The
// config/ keys are written by the Store alone.
//
// History keys are the version zero-padded to 20 digits, so that they sort
// in version order. Each is written once, so the history is complete after
// etcd compacts its revisions; the oldest versions are deleted as new ones
// are written, keeping Options.HistoryKeep of them.
//
// # Writes
//
// A write (Apply, Rollback, Seed) first validates the bundle with the code
// the nodes load it with: rules.Parse on each rule file, rules.NewConfig on
// all of them, and Options.ValidateShed on the shedding policy. It then
// reads the current version and, if it is the one the writer expected, puts
// the new current key and history record in one etcd transaction that
// compares the current key's mod revision with the one just read. Two
// writers that read the same version therefore cannot both succeed: the
// transaction of the second finds a different revision and fails, and the
// writer gets a *ConflictError naming the version now current. Versions are
// numbered 1, 2, 3 … by the writers, so they stay small and dense whatever
// else is written to etcd. A bundle equal to the current one stores nothing.
//
// Seed is the one write that is not an operator's: a node in etcd mode
// stores its bootstrap files as version 1 only if the store is empty, the
// current key and the history alike, checked in the same transaction. A
// missing current key with a history left is damage, not emptiness: the
// node serves the newest version that loads (NewestLoadable) and says so,
// and an operator repairs it with a rollback or an apply.
//
// Bundle.Hash identifies a configuration by content, so nodes that read
// their own files and nodes that follow etcd can be compared.
//
// Every change is written to the audit log (Options.Logger) with its
// version, author, reason and unified diff.
//
// # Watching
//
// Watch follows config/current and the history with one etcd watch, so a
// new version's content arrives with its current key and a node applies it
// one etcd round trip after the commit. It loads each version with the same
// code as Validate and never hands over a version that does not load: the
// node keeps its last good configuration and is told why. WatchOverrides
// does the same for overrides.
//
// # Diffs
//
// DiffBundles compares two bundles file by file with Myers' O(ND) line diff
// and prints the result as diff -u does, so operators can read it and patch
// can apply it.
package configstore
