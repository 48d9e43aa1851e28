// Package tools pins the upstream binaries the e2e tests run.
package tools
