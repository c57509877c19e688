// The status pages' sign-in (a node's and a cache's): with auth on, the page comes without
// data; its form gets a token from POST /v1/auth/token, kept for this tab only, and every
// fetch sends it. The page defines refresh(); a 401 shows the form again.
const TOKEN = "tunekv-token";
function authHeaders() {
  const t = sessionStorage.getItem(TOKEN);
  return t ? {"Authorization": "Bearer " + t} : {};
}
function showLogin(show) {
  const form = document.getElementById("login");
  if (form) form.hidden = !show;
}
const loginForm = document.getElementById("login");
if (loginForm) loginForm.addEventListener("submit", async ev => {
  ev.preventDefault();
  const f = new FormData(loginForm);
  const error = document.getElementById("login-error");
  try {
    const r = await fetch("/v1/auth/token", {method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({user: f.get("user"), password: f.get("password")})});
    const b = await r.json();
    if (!r.ok) { error.textContent = (b.error && b.error.message) || ("HTTP " + r.status); return; }
    sessionStorage.setItem(TOKEN, b.token);
    error.textContent = "";
    loginForm.reset();
    refresh();
  } catch (e) {
    error.textContent = String(e);
  }
});
