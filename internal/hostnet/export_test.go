package hostnet

// PolicyRules is policyRules, for tests that check a script nft would
// refuse without applying it.
var PolicyRules = policyRules
