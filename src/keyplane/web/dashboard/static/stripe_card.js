// "Add payment details" with Stripe: Stripe.js's Card Element takes the card in Stripe's frame;
// on submit, Stripe makes a PaymentMethod of it and the form posts only its id (pm_…), with the
// CSRF token. The card's number, expiry and security code never reach keyplane.
(function () {
  var form = document.getElementById("stripe-card-form");
  if (!form) { return; }
  var said = document.getElementById("card-element-error");
  var say = function (text) { said.textContent = text; };
  if (!window.Stripe) {
    say("Stripe's card form could not be loaded (a blocker, or no connection to js.stripe.com): " +
        "reload the page to try again.");
    return;
  }
  var stripe = window.Stripe(form.getAttribute("data-stripe-key"));
  var card = stripe.elements().create("card");
  card.mount("#card-element");
  card.on("change", function (event) { say(event.error ? event.error.message : ""); });
  var button = form.querySelector("button[type=submit]");
  var sent = document.getElementById("stripe-payment-method");
  form.addEventListener("submit", function (event) {
    if (sent.value) { return; } // made already: this is the post
    event.preventDefault();
    button.disabled = true;
    say("");
    stripe.createPaymentMethod({ type: "card", card: card }).then(function (result) {
      if (result.error) {
        say(result.error.message);
        button.disabled = false;
        return;
      }
      sent.value = result.paymentMethod.id;
      form.submit();
    });
  });
})();
