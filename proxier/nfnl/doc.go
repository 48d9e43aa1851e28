// Package nfnl is svcproxy's one netlink edge to nf_tables, shared by both
// backends: a connection per network namespace, the ruleset generation,
// the outline of a table, element batches, and the notifications.
//
// Requests, dumps and subscriptions go through github.com/mdlayher/netlink
// and decode names and flags only, never rule expressions or elements, so
// their cost follows the number of objects. Element batches are encoded
// here (see batch.go and BenchmarkElementBatch100k for why not by
// github.com/google/nftables); so is Attr, the allocation-free attribute
// lookup for notifications, which arrive one per element.
//
// What each backend uses:
//
//   - iptables, for iptables-nft (the probe of its Check): Dial, then
//     Generation for the stamp, and Chains, RuleCounts (one dump per
//     chain) and HasChain for the rule counts.
//   - nftables: Dial for each reader (check, sync, watcher, sentinel);
//     Generation and Shape for Check; NewBatch, Batch.Add, Batch.Delete,
//     Batch.Flush and Conn.Send for element-only changes; Subscribe,
//     Subscription.Receive, Leave, Join and Queued for the guard, which
//     decodes with Parse, Attr and ParseGen; Barrier for the sentinel.
//
// Kernel tests get a throwaway namespace from package nfnltest, and tests
// of element batches read them back with its Decode.
package nfnl
