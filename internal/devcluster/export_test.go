package devcluster

// WaitOrQuit is waitOrQuit, for the lab processes of the external tests.
var WaitOrQuit = waitOrQuit
